// /ready: the models loaded and every front listening. The gRPC front starts after the
// HTTP one; before, /ready said 200 while gRPC calls were still refused.
import t from 'tap';
import { readyRoute } from '../../src/infer/routes.ts';
import type { RouteContext } from '../../src/front/http/router.ts';

function ask(route: ReturnType<typeof readyRoute>): { status: number; body: Record<string, unknown> } {
  let out = { status: 0, body: {} as Record<string, unknown> };
  const sink = { send: (status: number, _h: unknown, body: string) => (out = { status, body: JSON.parse(body) }) };
  void route.handle({ sink } as unknown as RouteContext);
  return out;
}

t.test('not ready until every front listens, whatever the models say', async (t) => {
  let listening = false;
  const loaded = { ready: true };
  t.same(ask(readyRoute(loaded, () => listening)), { status: 503, body: { ready: false, fronts_listening: false } });
  t.same(ask(readyRoute(undefined, () => listening)).status, 503, 'inference off: the same');
  listening = true;
  t.same(ask(readyRoute(loaded, () => listening)), { status: 200, body: { ready: true, models_loaded: true } });
  t.same(ask(readyRoute({ ready: false }, () => listening)).status, 503, 'models still loading');
});
