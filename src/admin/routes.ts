// Admin API for the inference path: runtime config, warmup, promote, rollback.
// Every route here needs the admin credential (checked by the front).
import { BrokerError } from '../errors.ts';
import type { Route } from '../front/http/router.ts';
import type { InferService, RuntimeConfig } from '../infer/service.ts';
import { shareOfB } from '../infer/arms.ts';

const JSON_HEADERS = { 'content-type': 'application/json' };

type Patch = Parameters<InferService['update']>[0];

const FIELDS: Record<string, { key: keyof Patch; kind: 'weight' | 'bool' | 'percent' }> = {
  ab_weight_a: { key: 'abWeightA', kind: 'weight' },
  ab_weight_b: { key: 'abWeightB', kind: 'weight' },
  shadow_enabled: { key: 'shadowEnabled', kind: 'bool' },
  canary_enabled: { key: 'canaryEnabled', kind: 'bool' },
  canary_percent: { key: 'canaryPercent', kind: 'percent' },
};

export function parseConfigPatch(body: Record<string, unknown>): Patch {
  const patch: Record<string, number | boolean> = {};
  for (const [name, value] of Object.entries(body)) {
    // Own fields only: `constructor` or `__proto__` would find the prototype's, and pass.
    const f = Object.hasOwn(FIELDS, name) ? FIELDS[name] : undefined;
    if (f === undefined) throw invalid(name, `unknown field ${name}; allowed: ${Object.keys(FIELDS).join(', ')}`);
    if (f.kind === 'bool') {
      if (typeof value !== 'boolean') throw invalid(name, `${name} must be true or false`);
    } else {
      const max = f.kind === 'percent' ? 100 : 1e6;
      if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || value > max) throw invalid(name, `${name} must be a number between 0 and ${max}`);
    }
    patch[f.key] = value;
  }
  if (Object.keys(patch).length === 0) throw invalid('body', `no field to update; allowed: ${Object.keys(FIELDS).join(', ')}`);
  return patch as Patch;
}

/**
 * Warmup, promote and rollback act on the models loaded (both warmed; B made A; the pair a
 * promote replaced restored): there is nothing to choose, and a field or query parameter is
 * refused rather than ignored, so that a caller who meant another model or version learns so
 * before anything changes. Promote takes one precondition, `version`: B's version, as
 * `GET /admin/config` shows it.
 */
function noChoice(action: string, query: string, body: Record<string, unknown>, allowed: readonly string[] = []): void {
  if (query !== '') throw invalid('query', `${action} takes no query parameters${allowed.length > 0 ? `; send {"${allowed[0]}": …} as the body` : ''}`);
  for (const name of Object.keys(body)) {
    if (!allowed.includes(name)) throw invalid(name, `unknown field ${name}: ${action} acts on the models loaded${allowed.length > 0 ? `; allowed: ${allowed.join(', ')}` : ' and takes no fields'}`);
  }
}

function invalid(field: string, message: string): BrokerError {
  return new BrokerError('invalid_request', message, { details: { field } });
}

const model = (m: InferService['models']['A']) => ({ name: m.manifest.name, version: m.manifest.version, path: m.path });

/** What A and B are: the audit trail's before and after of a promote or rollback. */
function versions(service: InferService) {
  return { A: model(service.models.A), B: model(service.models.B) };
}

function view(service: InferService, c: RuntimeConfig) {
  const models = service.models;
  return {
    ab_weight_a: c.abWeightA,
    ab_weight_b: c.abWeightB,
    shadow_enabled: c.shadowEnabled,
    canary_enabled: c.canaryEnabled,
    canary_percent: c.canaryPercent,
    canary_rollback: c.canaryRollback,
    b_share: shareOfB(c),
    models: { A: model(models.A), B: model(models.B) },
    ready: service.ready,
  };
}

export function adminRoutes(service: InferService): Route[] {
  const json = (status: number, body: unknown) => [status, JSON_HEADERS, JSON.stringify(body)] as const;
  return [
    { method: 'GET', path: '/admin/config', admin: true, handle: ({ sink }) => sink.send(...json(200, view(service, service.runtimeConfig))) },
    {
      method: 'POST',
      path: '/admin/config',
      admin: true,
      body: 'json',
      handle({ body, sink }) {
        const updated = service.update(parseConfigPatch(body as Record<string, unknown>));
        sink.send(...json(200, view(service, updated)));
      },
    },
    {
      method: 'POST',
      path: '/admin/warmup',
      admin: true,
      body: 'json?',
      async handle({ req, body, sink }) {
        noChoice('warmup', req.query, body as Record<string, unknown>);
        const t0 = performance.now();
        const { runs, unavailable } = await service.warmup();
        // warmed: every model ran. One that cannot is named with why, as /ready names it.
        const warmed = Object.keys(unavailable).length === 0;
        sink.send(...json(200, { warmed, runs, duration_ms: Math.round(performance.now() - t0), ...(warmed ? {} : { unavailable }) }));
      },
    },
    {
      method: 'POST',
      path: '/admin/promote',
      admin: true,
      body: 'json?',
      async handle({ req, body, sink, note }) {
        const b = body as Record<string, unknown>;
        noChoice('promote', req.query, b, ['version']);
        const expected = b['version'];
        if (expected !== undefined) {
          if (typeof expected !== 'string') throw invalid('version', 'version must be a string: the version B must have');
          const { name, version } = service.models.B.manifest;
          if (version !== expected) throw new BrokerError('config_conflict', `B is ${name} ${version}, not ${expected}: nothing promoted`, { details: { field: 'version' } });
        }
        const t0 = performance.now();
        const before = versions(service);
        const promoted = await service.promote();
        if (note !== undefined) Object.assign(note, { before, after: { promoted, ...versions(service) } });
        // Again, after B became A: said so, and no pool rebuilt.
        const reason = promoted ? {} : { reason: 'A and B are already the same model: load another B to promote again, or POST /admin/rollback to undo the promote' };
        sink.send(...json(200, { promoted, duration_ms: Math.round(performance.now() - t0), ...reason, ...view(service, service.runtimeConfig) }));
      },
    },
    {
      method: 'POST',
      path: '/admin/rollback',
      admin: true,
      body: 'json?',
      async handle({ req, body, sink, note }) {
        noChoice('rollback', req.query, body as Record<string, unknown>);
        const t0 = performance.now();
        const before = versions(service);
        const rolledBack = await service.rollback();
        if (note !== undefined) Object.assign(note, { before, after: { rolled_back: rolledBack, ...versions(service) } });
        const reason = rolledBack ? {} : { reason: 'no promote to undo: none since the broker started, or it was rolled back already' };
        sink.send(...json(200, { rolled_back: rolledBack, duration_ms: Math.round(performance.now() - t0), ...reason, ...view(service, service.runtimeConfig) }));
      },
    },
  ];
}
