// Secrets an upstream URL may carry: a password (user:pass@host), a token as the user name
// (https://TOKEN@host), and a token in the query (?api_key=…, ?token=…, a signed URL's sig=…).
// Every view of the config (the admin APIs, their backups, the audit trail) shows them as ***;
// the running config, Redis and the saved file keep them.
import { BrokerError } from '../errors.ts';

const HIDDEN = '***';
const SECRET_PARAM = /key|token|secret|passw|sig|auth|credential/i;

/** The URL with its secrets shown as ***; a URL without any, exactly as written. */
export function redactUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return url;
  }
  let changed = false;
  if (u.password !== '') {
    u.password = HIDDEN;
    changed = true;
  } else if (u.username !== '') {
    u.username = HIDDEN;
    changed = true;
  }
  const params = [...u.searchParams];
  if (params.some(([k, v]) => SECRET_PARAM.test(k) && v !== '')) {
    u.search = new URLSearchParams(params.map(([k, v]): [string, string] => [k, SECRET_PARAM.test(k) && v !== '' ? HIDDEN : v])).toString();
    changed = true;
  }
  return changed ? u.href : url;
}

/**
 * A URL from a restored backup: the view of the running one (its secrets hidden) stands for
 * it. One that hides a secret and names no running URL is refused: restored as written, the
 * upstream would be called with *** for a password.
 */
function runningUrl(restored: string, running: string | undefined, field: string): string {
  if (running !== undefined && restored === redactUrl(running)) return running;
  if (restored.includes(HIDDEN)) throw new BrokerError('invalid_request', `${field} hides a secret (***) and is not the running URL it stood for: give the URL itself`, { details: { field } });
  return restored;
}

type WithUrl = { id?: string; url?: string };
interface UrlDoc {
  servers?: WithUrl[];
  modelGroups?: Record<string, { deployments: WithUrl[] }>;
}

/** The config with every URL's secrets hidden: what GET /config shows, and a backup holds. */
export function hideUrls<T extends UrlDoc>(raw: T): T {
  const hide = <E extends WithUrl>(e: E): E => {
    const url = e.url === undefined ? undefined : redactUrl(e.url);
    return url === e.url ? e : { ...e, url };
  };
  return {
    ...raw,
    ...(raw.servers !== undefined ? { servers: raw.servers.map(hide) } : {}),
    ...(raw.modelGroups !== undefined ? { modelGroups: Object.fromEntries(Object.entries(raw.modelGroups).map(([name, g]) => [name, { ...g, deployments: g.deployments.map(hide) }])) } : {}),
  };
}

/** A restored backup of hideUrls(): each hidden URL back to the running one of the same server or deployment. */
export function restoreUrls<T>(doc: T, running: UrlDoc): T {
  if (typeof doc !== 'object' || doc === null) return doc;
  const d = doc as UrlDoc;
  const back = (e: WithUrl, i: number, runningList: WithUrl[] | undefined, field: string): WithUrl => {
    if (typeof e !== 'object' || e === null || typeof e.url !== 'string') return e;
    const same = runningList?.find((r, j) => (e.id !== undefined ? r.id === e.id : r.id === undefined && j === i));
    const url = runningUrl(e.url, same?.url, `${field}[${i}].url`);
    return url === e.url ? e : { ...e, url };
  };
  const out: UrlDoc = { ...d };
  if (Array.isArray(d.servers)) out.servers = d.servers.map((s, i) => back(s, i, running.servers, 'servers'));
  if (typeof d.modelGroups === 'object' && d.modelGroups !== null) {
    out.modelGroups = Object.fromEntries(
      Object.entries(d.modelGroups).map(([name, g]) => {
        if (typeof g !== 'object' || g === null || !Array.isArray(g.deployments)) return [name, g];
        return [name, { ...g, deployments: g.deployments.map((e, i) => back(e, i, running.modelGroups?.[name]?.deployments, `modelGroups.${name}.deployments`)) }];
      }),
    );
  }
  return out as T;
}
