// Liveness and metrics routes.
import type { Route } from '../front/http/router.ts';
import type { Metrics } from './metrics.ts';

const JSON_HEADERS = { 'content-type': 'application/json' };

/** `exposition`: the process's metrics text when other threads hold part of it (see plane/planes.ts). */
export function obsRoutes(metrics: Metrics, exposition?: () => Promise<string>): Route[] {
  return [
    { method: 'GET', path: '/healthz', handle: ({ sink }) => sink.send(200, JSON_HEADERS, '{"ok":true}') },
    { method: 'GET', path: '/health', handle: ({ sink }) => sink.send(200, JSON_HEADERS, '{"status":"ok"}') },
    {
      method: 'GET',
      path: '/metrics',
      async handle({ sink }) {
        const text = exposition !== undefined ? await exposition() : await metrics.registry.metrics();
        sink.send(200, { 'content-type': metrics.registry.contentType }, text);
      },
    },
  ];
}
