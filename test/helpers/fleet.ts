// Mock LLM upstreams and a broker in front of them, from a fleet object, for a test file.
import type { ChildProcess } from 'node:child_process';
import { runTs, sigkill, spawnReady } from './child.ts';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
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

export interface MockProcess {
  readonly port: number;
  readonly url: string;
  /** SIGKILL: the server is gone, its connections reset. */
  kill(): Promise<void>;
  /** A new process on the same port. */
  restart(): Promise<void>;
}

/** A mock upstream in a process of its own (`npm run mock-upstream`), for tests that kill servers. */
export async function spawnMock(t: Teardown, args: string[] = []): Promise<MockProcess> {
  const main = fileURLToPath(new URL('../../src/mock-upstream/main.ts', import.meta.url));
  let child: ChildProcess | undefined;
  const start = async (port: number): Promise<number> => {
    // Its first stdout line says where it listens.
    const firstLine = (out: string): number | undefined => (out.includes('\n') ? (JSON.parse(out.split('\n')[0]!) as { listening: number }).listening : undefined);
    const s = await spawnReady(process.execPath, [...runTs(main), '--port', String(port), '--tokens', '4', ...args], firstLine);
    child = s.child;
    return s.value;
  };
  const port = await start(0);
  const stop = (): Promise<void> => sigkill(child);
  t.teardown(stop);
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    kill: stop,
    async restart() {
      await stop();
      await start(port);
    },
  };
}
