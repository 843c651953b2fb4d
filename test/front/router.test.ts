import t from 'tap';
import { Router, type Route } from '../../src/front/http/router.ts';

const r = (method: Route['method'], path: string): Route => ({ method, path, handle() {} });

t.test('exact, param, 404 and 405', async (t) => {
  const router = new Router().add(r('GET', '/a')).add(r('POST', '/a')).add(r('PUT', '/flags/:flag')).add(r('GET', '/x/:id/y'));
  t.equal(router.match('GET', '/a').kind, 'found');
  t.match(router.match('DELETE', '/a'), { kind: 'method_not_allowed', allowed: ['GET', 'POST', 'HEAD'], route: { path: '/a' } }, 'HEAD goes with GET; a route of the path names the 405');
  t.equal(router.match('HEAD', '/a').kind, 'found', 'HEAD is served by the GET route');
  t.equal(router.match('HEAD', '/flags/x').kind, 'method_not_allowed', 'no GET, no HEAD');
  const m = router.match('PUT', '/flags/sticky%20routing');
  t.equal(m.kind, 'found');
  t.same(m.kind === 'found' && m.params, { flag: 'sticky routing' });
  t.match(router.match('GET', '/flags/x'), { kind: 'method_not_allowed', allowed: ['PUT'], route: { path: '/flags/:flag' } });
  t.equal(router.match('GET', '/x/1/y').kind, 'found');
  t.equal(router.match('GET', '/x/1/z').kind, 'not_found');
  t.equal(router.match('GET', '/flags/%E0%A4%A').kind, 'not_found', 'malformed escapes do not throw');
  t.throws(() => router.add(r('GET', '/a')), /duplicate/);
});

t.test('a last `:name*` segment takes the rest of the path, slashes and all', async (t) => {
  const router = new Router().add(r('GET', '/v1/models/:model*'));
  const m = router.match('GET', '/v1/models/org/some%20model');
  t.same(m.kind === 'found' && m.params, { model: 'org/some model' });
  const one = router.match('GET', '/v1/models/plain');
  t.same(one.kind === 'found' && one.params, { model: 'plain' });
  t.equal(router.match('GET', '/v1/models').kind, 'not_found', 'the rest may not be empty');
  t.equal(router.match('GET', '/v1/models/').kind, 'not_found');
  t.equal(router.match('GET', '/v1/models/a//b').kind, 'not_found', 'no empty segment inside');
  t.equal(router.match('GET', '/v1/models/a/%E0%A4%A').kind, 'not_found', 'malformed escapes do not throw');
});
