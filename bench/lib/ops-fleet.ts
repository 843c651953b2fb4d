// A fleet of mock LLM upstreams that exercises every outcome, for the fuzz and soak
// commands and the Prometheus and chaos tests: healthy OpenAI and Ollama deployments,
// one that answers 429 (retried on a healthy one), one that cuts its streams after two
// tokens, a slow one behind a concurrency limit of 1 (queue_timeout), one with a tiny
// request quota (quota_exceeded), a cached group, a group that falls back to `chat` (its
// deployment answers 500), one whose upstream sends a garbage event mid-stream, and one
// whose upstream stalls past its idle-chunk timeout.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { createMockUpstream, type MockUpstream } from '../../src/mock-upstream/server.ts';

export interface OpsFleet {
  /** The fleet file (BROKER_CONFIG). */
  readonly path: string;
  readonly mocks: { readonly good: MockUpstream; readonly limited: MockUpstream; readonly cut: MockUpstream; readonly slow: MockUpstream; readonly down: MockUpstream; readonly junk: MockUpstream; readonly stall: MockUpstream };
  close(): Promise<void>;
}

/** Model groups of the ops fleet; `chat` is the healthy one. */
export const OPS_GROUPS = ['chat', 'flaky', 'cut', 'tight', 'quota', 'cached', 'fallback', 'junk', 'stalled'] as const;

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
  const [good, limited, cut, slow, down, junk, stall] = await Promise.all([
    createMockUpstream({ tokens: o.tokens ?? 8, tps: o.tps ?? 0 }),
    createMockUpstream({ tokens: 4, fail: '429' }),
    createMockUpstream({ tokens: 8, fail: 'reset', failAfter: 2 }),
    createMockUpstream({ tokens: 4, ttftMs: o.slowTtftMs ?? 400 }),
    createMockUpstream({ tokens: 4, fail: '500' }),
    createMockUpstream({ tokens: 8, fail: 'garbage', failAfter: 2 }),
    createMockUpstream({ tokens: 8, fail: 'stall', failAfter: 1 }),
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
      cached: { cache: 'on', deployments: [{ id: 'cached', provider: 'openai', url: good.url, model: 'mock-model', concurrencyLimit: limit }] },
      fallback: { fallbacks: ['chat'], deployments: [{ id: 'down', provider: 'openai', url: down.url, model: 'mock-model', concurrencyLimit: limit }] },
      junk: { deployments: [{ id: 'junk', provider: 'openai', url: junk.url, model: 'mock-model', concurrencyLimit: limit }] },
      stalled: { deployments: [{ id: 'stalled', provider: 'openai', url: stall.url, model: 'mock-model', concurrencyLimit: limit, idleChunkTimeoutMs: 200 }] },
    },
  };
  const dir = mkdtempSync(join(tmpdir(), 'eb-ops-fleet-'));
  const path = join(dir, 'broker.yaml');
  writeFileSync(path, stringify(fleet));
  return {
    path,
    mocks: { good, limited, cut, slow, down, junk, stall },
    close: async () => {
      await Promise.all([good, limited, cut, slow, down, junk, stall].map((m) => m.close()));
    },
  };
}
