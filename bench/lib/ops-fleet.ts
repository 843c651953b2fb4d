// A fleet of mock LLM upstreams that exercises every outcome, for the fuzz and soak
// commands and the Prometheus and chaos tests: healthy OpenAI and Ollama deployments,
// one that answers 429 (retried on a healthy one), one that cuts its streams after two
// tokens, a slow one behind a concurrency limit of 1 (queue_timeout), and one with a
// tiny request quota (quota_exceeded).
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { createMockUpstream, type MockUpstream } from '../../src/mock-upstream/server.ts';

export interface OpsFleet {
  /** The fleet file (BROKER_CONFIG). */
  readonly path: string;
  readonly mocks: { readonly good: MockUpstream; readonly limited: MockUpstream; readonly cut: MockUpstream; readonly slow: MockUpstream };
  close(): Promise<void>;
}

/** Model groups of the ops fleet; `chat` is the healthy one. */
export const OPS_GROUPS = ['chat', 'flaky', 'cut', 'tight', 'quota'] as const;

export interface OpsFleetOptions {
  /** Tokens per healthy reply (default 8) and the healthy mock's tokens per second (default 0: at once). */
  readonly tokens?: number;
  readonly tps?: number;
  /** The slow deployment's time to first token, ms (default 400). */
  readonly slowTtftMs?: number;
  /** scheduler.maxWaitMs (default 100: the tight group's extra requests time out fast). */
  readonly maxWaitMs?: number;
  /** concurrencyLimit of the healthy deployments (default 64). */
  readonly concurrency?: number;
}

export async function startOpsFleet(o: OpsFleetOptions = {}): Promise<OpsFleet> {
  const [good, limited, cut, slow] = await Promise.all([
    createMockUpstream({ tokens: o.tokens ?? 8, tps: o.tps ?? 0 }),
    createMockUpstream({ tokens: 4, fail: '429' }),
    createMockUpstream({ tokens: 8, fail: 'reset', failAfter: 2 }),
    createMockUpstream({ tokens: 4, ttftMs: o.slowTtftMs ?? 400 }),
  ]);
  const limit = o.concurrency ?? 64;
  const fleet = {
    upstream: { connectTimeoutMs: 2000, headersTimeoutMs: 10000, idleTimeoutMs: 5000 },
    router: { failureThreshold: 1000, cooldownMs: 1000 },
    scheduler: { maxWaitMs: o.maxWaitMs ?? 100 },
    modelGroups: {
      chat: {
        deployments: [
          { id: 'good-openai', provider: 'openai', url: good.url, model: 'mock-model', concurrencyLimit: limit },
          { id: 'good-ollama', provider: 'ollama', url: good.url, model: 'mock-model', concurrencyLimit: limit },
        ],
      },
      flaky: {
        deployments: [
          { id: 'limited', provider: 'openai', url: limited.url, model: 'mock-model', concurrencyLimit: limit, weight: 100 },
          { id: 'fallback', provider: 'openai', url: good.url, model: 'mock-model', concurrencyLimit: limit, weight: 1 },
        ],
      },
      cut: { deployments: [{ id: 'cutter', provider: 'openai', url: cut.url, model: 'mock-model', concurrencyLimit: limit }] },
      tight: { deployments: [{ id: 'slow', provider: 'ollama', url: slow.url, model: 'mock-model', concurrencyLimit: 1 }] },
      quota: { deployments: [{ id: 'metered', provider: 'openai', url: good.url, model: 'mock-model', concurrencyLimit: limit, rpm: 2 }] },
    },
  };
  const dir = mkdtempSync(join(tmpdir(), 'eb-ops-fleet-'));
  const path = join(dir, 'broker.yaml');
  writeFileSync(path, stringify(fleet));
  return {
    path,
    mocks: { good, limited, cut, slow },
    close: async () => {
      await Promise.all([good.close(), limited.close(), cut.close(), slow.close()]);
    },
  };
}
