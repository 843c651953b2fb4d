// HTTP to upstream deployments: one undici keep-alive pool per deployment, with the
// deployment's connect, headers and idle timeouts.
import { Pool, type Dispatcher } from 'undici';
import type { DeploymentConfig } from '../config/broker-config.ts';
import { PROVIDERS, upstreamTarget, type RequestKind } from '../llm/providers.ts';
import type { AbortLike } from '../abort.ts';
import { connectorWithTimeout } from './connect-timeout.ts';

export interface UpstreamResponse {
  readonly statusCode: number;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  readonly body: Dispatcher.ResponseData['body'];
}

interface Entry {
  /** The config it was made for; another object with the same signature keeps the pool. */
  config: DeploymentConfig;
  readonly signature: string;
  readonly pool: Pool;
  readonly path: Record<string, string>;
  readonly headers: Record<string, string>;
}

/**
 * Keep-alive pools by deployment, made on first use. A deployment changed at run time (its
 * URL, key, timeouts or pool size) gets a new pool; the old one closes once its requests end.
 */
export class Upstreams {
  private readonly pools = new Map<string, Entry>();

  private entry(d: DeploymentConfig): Entry {
    const e = this.pools.get(d.id);
    if (e !== undefined && e.config === d) return e;
    const headers: Record<string, string> = { 'content-type': 'application/json', accept: '*/*', ...PROVIDERS[d.provider].headers(d) };
    const signature = JSON.stringify([d.url, d.provider, d.concurrencyLimit, d.connectTimeoutMs, d.headersTimeoutMs, d.idleChunkTimeoutMs, d.keepAliveTimeoutMs, headers]);
    if (e !== undefined && e.signature === signature) {
      e.config = d;
      return e;
    }
    if (e !== undefined) void e.pool.close();
    const chat = upstreamTarget(d, 'chat');
    const pool = new Pool(chat.origin, {
      connections: Math.max(d.concurrencyLimit, 1) * 2,
      connect: connectorWithTimeout(d.connectTimeoutMs),
      // Requests of the proxy set their own (0: the attempt's deadline times them); these bound the rest (health checks).
      headersTimeout: d.headersTimeoutMs,
      bodyTimeout: d.idleChunkTimeoutMs,
      keepAliveTimeout: d.keepAliveTimeoutMs,
      pipelining: 1,
    });
    const created: Entry = {
      config: d,
      signature,
      pool,
      path: { chat: chat.path, completion: upstreamTarget(d, 'completion').path, embed: upstreamTarget(d, 'embed').path, responses: upstreamTarget(d, 'responses').path, models: upstreamTarget(d, 'models').path },
      headers,
    };
    this.pools.set(d.id, created);
    return created;
  }

  /**
   * POST a JSON body; resolves when the upstream's headers arrive. A connection the upstream
   * closed before any reply is tried once more, on a new one: a kept-alive connection the
   * server closed as idle (uvicorn, llama.cpp: after 5 s) while the request was on its way
   * never reached it, and the next attempt of the proxy may find no other deployment.
   */
  async post(d: DeploymentConfig, kind: RequestKind, body: string, signal: AbortLike, extraHeaders?: Record<string, string>): Promise<UpstreamResponse> {
    try {
      return await this.send(d, kind, body, signal, extraHeaders);
    } catch (err) {
      if (signal.aborted || !closedUnder(err)) throw err;
      return this.send(d, kind, body, signal, extraHeaders);
    }
  }

  private send(d: DeploymentConfig, kind: RequestKind, body: string, signal: AbortLike, extraHeaders?: Record<string, string>): Promise<UpstreamResponse> {
    const p = this.entry(d);
    return p.pool.request({
      method: 'POST',
      path: p.path[kind]!,
      headers: extraHeaders === undefined ? p.headers : { ...p.headers, ...extraHeaders },
      body,
      signal,
      // The first-byte, idle and total timeouts are the attempt's (src/llm/exec/deadline.ts).
      headersTimeout: 0,
      bodyTimeout: 0,
    });
  }

  async close(): Promise<void> {
    await Promise.all([...this.pools.values()].map((p) => p.pool.close()));
  }
}

/** The upstream closed the connection under a request or a reply: one cut, whether undici says UND_ERR_SOCKET or ECONNRESET (by timing). */
export function closedUnder(err: unknown): boolean {
  const code = (err as { code?: string } | null)?.code;
  return code === 'UND_ERR_SOCKET' || code === 'ECONNRESET' || code === 'EPIPE';
}
