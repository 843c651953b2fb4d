// Mock LLM upstreams and a broker in front of them, from a fleet object, for a test file.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { createMockUpstream, type MockUpstream, type MockUpstreamOptions } from '../../src/mock-upstream/server.ts';
import { startTestBroker, type TestBroker } from './broker.ts';

interface Teardown {
  teardown(fn: () => unknown): void;
}

/** A mock upstream (4 tokens per reply unless told), closed when `t` ends. */
export async function startMock(t: Teardown, opts: MockUpstreamOptions = {}): Promise<MockUpstream> {
  const m = await createMockUpstream({ tokens: 4, ...opts });
  t.teardown(() => m.close());
  return m;
}

/** A broker serving `fleet` (written as its BROKER_CONFIG), closed when `t` ends. */
export async function startFleetBroker(t: Teardown, fleet: unknown, env: Record<string, string> = {}): Promise<TestBroker> {
  const dir = mkdtempSync(join(tmpdir(), 'eb-fleet-'));
  writeFileSync(join(dir, 'broker.yaml'), stringify(fleet));
  const tb = await startTestBroker({ BROKER_CONFIG: join(dir, 'broker.yaml'), ...env });
  t.teardown(() => tb.close());
  return tb;
}
