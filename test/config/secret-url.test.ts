// What a view of the config hides of an upstream URL, and how a backup's hidden URL comes back.
import t from 'tap';
import { hideUrls, redactUrl, restoreUrls } from '../../src/config/secret-url.ts';

t.test('redactUrl hides passwords, a lone user name (a token), and secret query values; the rest stays as written', async (t) => {
  t.equal(redactUrl('http://127.0.0.1:11434'), 'http://127.0.0.1:11434', 'nothing to hide: exactly as written (no slash added)');
  t.equal(redactUrl('http://u:p@h:1/v1'), 'http://u:***@h:1/v1');
  t.equal(redactUrl('https://ghp_token@h/'), 'https://***@h/', 'a token as the user name');
  t.equal(redactUrl('https://h/v1?api-version=2024-02-01'), 'https://h/v1?api-version=2024-02-01', 'a harmless parameter stays');
  for (const k of ['api_key', 'key', 'token', 'access_token', 'secret', 'password', 'sig', 'X-Amz-Signature', 'auth', 'credential']) {
    t.equal(redactUrl(`https://h/?${k}=v&a=1`), `https://h/?${k}=***&a=1`, k);
  }
  t.equal(redactUrl('https://h/?token='), 'https://h/?token=', 'an empty value hides nothing');
  t.equal(redactUrl('not a url'), 'not a url');
});

t.test('restoreUrls: a hidden URL stands for the running one of the same server or deployment; one that stands for none is refused', async (t) => {
  const running = {
    servers: [{ id: 's', url: 'http://u:pw@h:1' }],
    modelGroups: { g: { deployments: [{ url: 'http://h:2/?token=abc' }, { id: 'd2', url: 'http://h:3' }] } },
  };
  const view = hideUrls(running);
  t.equal(view.servers[0]!.url, 'http://u:***@h:1/');
  t.equal(view.modelGroups.g.deployments[1]!.url, 'http://h:3', 'untouched');
  t.same(restoreUrls(view, running), running, 'the view of the running config restores to it');
  t.equal(running.servers[0]!.url, 'http://u:pw@h:1', 'hideUrls copies, never edits the running config');
  const edited = structuredClone(view);
  edited.servers[0]!.url = 'http://u:new-pw@h:1/';
  t.equal(restoreUrls(edited, running).servers[0]!.url, 'http://u:new-pw@h:1/', 'a URL given in full is taken as given');
  const stray = structuredClone(view);
  stray.modelGroups.g.deployments[0]!.url = 'http://other:2/?token=***';
  t.throws(() => restoreUrls(stray, running), { code: 'invalid_request', message: /modelGroups\.g\.deployments\[0\]\.url hides a secret/ });
  t.equal(restoreUrls('x', running), 'x', 'not a document: left to the schema');
});
