import t from 'tap';
import { Router, type Route } from '../../src/front/http/router.ts';

const r = (method: Route['method'], path: string): Route => ({ method, path, handle() {} });

t.test('exact, param, 404 and 405', async (t) => {
  const router = new Router().add(r('GET', '/a')).add(r('POST', '/a')).add(r('PUT', '/flags/:flag')).add(r('GET', '/x/:id/y'));
  t.equal(router.match('GET', '/a').kind, 'found');
  t.same(router.match('DELETE', '/a'), { kind: 'method_not_allowed', allowed: ['GET', 'POST', 'HEAD'] }, 'HEAD goes with GET');
  t.equal(router.match('HEAD', '/a').kind, 'found', 'HEAD is served by the GET route');
  t.equal(router.match('HEAD', '/flags/x').kind, 'method_not_allowed', 'no GET, no HEAD');
  const m = router.match('PUT', '/flags/sticky%20routing');
  t.equal(m.kind, 'found');
  t.same(m.kind === 'found' && m.params, { flag: 'sticky routing' });
  t.same(router.match('GET', '/flags/x'), { kind: 'method_not_allowed', allowed: ['PUT'] });
  t.equal(router.match('GET', '/x/1/y').kind, 'found');
  t.equal(router.match('GET', '/x/1/z').kind, 'not_found');
  t.equal(router.match('GET', '/flags/%E0%A4%A').kind, 'not_found', 'malformed escapes do not throw');
  t.throws(() => router.add(r('GET', '/a')), /duplicate/);
});
