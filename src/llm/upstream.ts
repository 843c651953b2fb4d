// HTTP to upstream deployments: one undici keep-alive pool per deployment, with the
// deployment's connect, headers and idle timeouts.
import { Pool, type Dispatcher } from 'undici';
import type { DeploymentConfig } from '../config/broker-config.ts';
import { PROVIDERS, upstreamTarget, type RequestKind } from './providers.ts';

export interface UpstreamResponse {
  readonly statusCode: number;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  readonly body: Dispatcher.ResponseData['body'];
}

export class Upstreams {
  private readonly pools = new Map<string, { pool: Pool; path: Record<string, string>; headers: Record<string, string> }>();

  constructor(deployments: Iterable<DeploymentConfig>) {
    for (const d of deployments) {
      const chat = upstreamTarget(d, 'chat');
      const pool = new Pool(chat.origin, {
        connections: Math.max(d.concurrencyLimit, 1) * 2,
        connectTimeout: d.connectTimeoutMs,
        headersTimeout: d.headersTimeoutMs,
        bodyTimeout: d.idleTimeoutMs,
        keepAliveTimeout: d.keepAliveTimeoutMs,
        pipelining: 1,
      });
      this.pools.set(d.id, {
        pool,
        path: { chat: chat.path, completion: upstreamTarget(d, 'completion').path, models: upstreamTarget(d, 'models').path },
        headers: { 'content-type': 'application/json', accept: '*/*', ...PROVIDERS[d.provider].headers(d) },
      });
    }
  }

  /** POST a JSON body; resolves when the upstream's headers arrive. */
  post(d: DeploymentConfig, kind: RequestKind, body: string, signal: AbortSignal, extraHeaders?: Record<string, string>): Promise<UpstreamResponse> {
    const p = this.pools.get(d.id)!;
    return p.pool.request({
      method: 'POST',
      path: p.path[kind]!,
      headers: extraHeaders === undefined ? p.headers : { ...p.headers, ...extraHeaders },
      body,
      signal,
    });
  }

  async getJson(d: DeploymentConfig, signal?: AbortSignal): Promise<unknown> {
    const p = this.pools.get(d.id)!;
    const res = await p.pool.request({ method: 'GET', path: p.path.models!, headers: p.headers, signal });
    if (res.statusCode !== 200) {
      await res.body.dump();
      throw new Error(`HTTP ${res.statusCode}`);
    }
    return res.body.json();
  }

  async close(): Promise<void> {
    await Promise.all([...this.pools.values()].map((p) => p.pool.close()));
  }
}
