// Route table: exact paths in a map, `:param` paths matched by segments. Built once;
// a lookup tells apart "no such path" (404) from "path exists, wrong method" (405).
// A last segment `:name*` takes the rest of the path, slashes included: model names
// such as `org/model` that some clients send unencoded.
import type { BrokerRequest, ReplySink } from '../reply.ts';
import type { Principal } from '../../guard/rbac.ts';

export type Method = 'GET' | 'POST' | 'PUT' | 'DELETE' | 'PATCH';

/** What an admin change tells the audit trail beyond who and which route: its target, before and after. */
export interface AuditNote {
  target?: string;
  before?: unknown;
  after?: unknown;
}

export interface RouteContext {
  readonly req: BrokerRequest;
  /** The caller of an admin route (or of a client route under AUTH_MODE jwt). */
  readonly principal?: Principal;
  /** Admin changes fill it in for the audit trail. */
  readonly note?: AuditNote;
  readonly params: Readonly<Record<string, string>>;
  /** Parsed JSON when the route asks `body: 'json'`, the raw bytes with `body: 'raw'`. */
  readonly body: unknown;
  readonly sink: ReplySink;
}

export interface Route {
  readonly method: Method;
  /** `/v1/infer` or `/api/x/:id`. */
  readonly path: string;
  /** Low-cardinality name for metrics and logs; defaults to the path pattern. */
  readonly name?: string;
  /** 'json?': a JSON object, or nothing (read as {}): admin actions whose body is optional. */
  readonly body?: 'json' | 'json?' | 'raw' | 'none';
  /** Media types (lower case, no parameters) whose body is handed over raw (a Buffer), whatever `body` says. */
  readonly rawTypes?: ReadonlySet<string>;
  /**
   * A body in another media type (curl's default form type, none at all) that is raw all the
   * same (an image's magic bytes, which no JSON starts with): handed over raw, not refused as
   * bad JSON. `multipart`: what a multipart/form-data body is told.
   */
  readonly rawSniff?: { readonly raw: (body: Uint8Array) => boolean; readonly multipart: string };
  /** Needs the admin credential. */
  readonly admin?: boolean;
  /** An admin POST that only reads (a query with a body): left out of the audit trail. */
  readonly readOnly?: boolean;
  /** Subject to the per-client rate limit. */
  readonly rateLimited?: boolean;
  /**
   * A listing open to anyone (model lists: discovery and health checks need them), whose
   * credential, when one is sent, is checked as a client route's (AUTH_MODE): a mistyped key
   * is 401 there too, and a live one says whose tier the list is for.
   */
  readonly lists?: boolean;
  /** Request tracking records this route's requests under this API name (docs/tracking.md). */
  readonly track?: string;
  /** How errors on this route are shaped (client APIs differ); default is the broker's. */
  readonly errorShape?: ErrorShape;
  handle(ctx: RouteContext): void | Promise<void>;
}

/** `param`: the request field at fault, when the error names one (BrokerError details.field). */
export type ErrorShape = (code: string, message: string, requestId: string, status: number, param?: string | null) => unknown;

export type Match =
  | { kind: 'found'; route: Route; params: Record<string, string> }
  /** `route`: one of the path's routes, whose name labels the 405 (metrics, access log) and whose error shape it takes. */
  | { kind: 'method_not_allowed'; allowed: string[]; route: Route }
  | { kind: 'not_found' };

interface ParamRoute {
  segments: string[];
  route: Route;
}

export class Router {
  private readonly exact = new Map<string, Map<string, Route>>();
  private readonly patterns: ParamRoute[] = [];

  add(route: Route): this {
    if (route.path.includes('/:')) {
      this.patterns.push({ segments: route.path.split('/'), route });
      return this;
    }
    let byMethod = this.exact.get(route.path);
    if (byMethod === undefined) this.exact.set(route.path, (byMethod = new Map()));
    if (byMethod.has(route.method)) throw new Error(`duplicate route ${route.method} ${route.path}`);
    byMethod.set(route.method, route);
    return this;
  }

  /** HEAD is answered wherever GET is (the front sends the headers without the body). */
  match(method: string, path: string): Match {
    const m = this.matchExactly(method, path);
    if (m.kind === 'method_not_allowed' && method === 'HEAD' && m.allowed.includes('GET')) return this.matchExactly('GET', path);
    if (m.kind === 'method_not_allowed' && m.allowed.includes('GET')) m.allowed.push('HEAD');
    return m;
  }

  private matchExactly(method: string, path: string): Match {
    const byMethod = this.exact.get(path);
    if (byMethod !== undefined) {
      const route = byMethod.get(method);
      if (route !== undefined) return { kind: 'found', route, params: {} };
      return { kind: 'method_not_allowed', allowed: [...byMethod.keys()], route: byMethod.values().next().value! };
    }
    const segments = path.split('/');
    const allowed: string[] = [];
    let other: Route | undefined;
    for (const p of this.patterns) {
      const params = matchSegments(p.segments, segments);
      if (params === undefined) continue;
      if (p.route.method === method) return { kind: 'found', route: p.route, params };
      allowed.push(p.route.method);
      other ??= p.route;
    }
    return other !== undefined ? { kind: 'method_not_allowed', allowed, route: other } : { kind: 'not_found' };
  }
}

function matchSegments(pattern: string[], segments: string[]): Record<string, string> | undefined {
  const last = pattern.length - 1;
  const rest = pattern[last]!.endsWith('*');
  if (rest ? segments.length < pattern.length : pattern.length !== segments.length) return undefined;
  let params: Record<string, string> | undefined;
  for (let i = 0; i < pattern.length; i++) {
    const p = pattern[i]!;
    if (rest && i === last) {
      const tail = segments.slice(last);
      if (tail.includes('')) return undefined;
      const value = decodeAll(tail);
      if (value === undefined) return undefined;
      (params ??= {})[p.slice(1, -1)] = value;
      break;
    }
    const s = segments[i]!;
    if (p.startsWith(':')) {
      if (s === '') return undefined;
      let value: string;
      try {
        value = decodeURIComponent(s);
      } catch {
        return undefined;
      }
      (params ??= {})[p.slice(1)] = value;
    } else if (p !== s) return undefined;
  }
  return params ?? {};
}

function decodeAll(segments: string[]): string | undefined {
  try {
    return segments.map(decodeURIComponent).join('/');
  } catch {
    return undefined;
  }
}
