// The audit trail: every change made through an admin route, with who (subject and
// role), what (route and target), before and after where the route says, when and on
// which replica. Written to the state store (a capped Redis stream, or memory) and to
// the log. Request bodies are not copied: a route puts what matters in its note.
import type { AdminChange } from '../front/http/dispatch.ts';
import { redactParam, redactPath } from '../guard/api-key.ts';
import type { Logger } from './logger.ts';
import type { AuditEntry, StateStore } from '../state/store.ts';

export function auditTrail(store: StateStore, logger: Logger, replica: string): (c: AdminChange) => void {
  return (c) => {
    const path = redactPath(c.req.path);
    const entry: AuditEntry = {
      at: new Date().toISOString(),
      replica,
      subject: c.principal.subject,
      role: c.principal.roles.join(','),
      action: `${c.req.method} ${path}`,
      route: path,
      target: c.note.target ?? (Object.values(c.params).map(redactParam).join('/') || null),
      before: c.note.before ?? null,
      after: c.note.after ?? null,
    };
    record(store, logger, entry, c.req.id);
  };
}

/**
 * A change made by a signal, not through a route (SIGHUP's reload of the fleet file): the
 * same entry, its subject the signal (`signal:SIGHUP`), its route the one that does the same.
 */
export function auditSignal(store: StateStore, logger: Logger, replica: string, signal: string, route: string, after: unknown): void {
  record(store, logger, { at: new Date().toISOString(), replica, subject: `signal:${signal}`, role: 'operator', action: signal, route, target: null, before: null, after }, undefined);
}

function record(store: StateStore, logger: Logger, entry: AuditEntry, traceId: string | undefined): void {
  logger.info({ audit: 'admin_change', trace_id: traceId, ...entry }, 'admin change');
  // The warning carries the entry: at LOG_LEVEL=warn the info line above is not written, and
  // the log is then the change's only record.
  store.appendAudit(entry).catch((err: Error) => logger.warn({ err: err.message, audit: 'admin_change', trace_id: traceId, ...entry }, 'audit: the store is unreachable; this change is in the log only'));
}
