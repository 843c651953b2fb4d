// API keys are shown by id only: quota subjects, labels, admin replies and logged paths.
import t from 'tap';
import { isKeyId, keyId, redactPath } from '../../src/guard/api-key.ts';

t.test('a key id is stable, short and not the key', async (t) => {
  const id = keyId('sk-live-123');
  t.match(id, /^k_[0-9a-f]{12}$/);
  t.equal(keyId('sk-live-123'), id);
  t.not(keyId('sk-live-124'), id);
  t.ok(isKeyId(id));
  t.notOk(isKeyId('sk-live-123'));
});

t.test('logged paths carry the id, never the key', async (t) => {
  const id = keyId('sk-live-123');
  t.equal(redactPath('/api/industrial/quota/key:sk-live-123'), `/api/industrial/quota/key:${id}`);
  t.equal(redactPath('/api/industrial/quota/key:sk%2Dlive%2D123'), `/api/industrial/quota/key:${id}`, 'percent-encoded too');
  t.equal(redactPath(`/api/industrial/quota/key:${id}`), `/api/industrial/quota/key:${id}`, 'an id stays');
  // These reached the route (or a 404) and were logged with the key in them.
  for (const p of ['/api/industrial/quota/key%3Ask-live-123', '/api/industrial/quota/%6Bey:sk-live-123', '/api/industrial/quota/KEY:sk-live-123', '/api/industrial/quota//key:sk-live-123/']) {
    t.notMatch(redactPath(p), /sk-live|sk%2Dlive/, p);
    t.match(redactPath(p), id, p);
  }
  // A key pasted where DELETE /api/auth/keys/:id wants its id.
  t.equal(redactPath('/api/auth/keys/sk-live-123'), `/api/auth/keys/${id}`);
  t.equal(redactPath('/api/auth//KEYS/sk%2Dlive%2D123/'), `/api/auth//KEYS/${id}/`);
  t.equal(redactPath(`/api/auth/keys/${id}`), `/api/auth/keys/${id}`, 'an id stays');
  t.equal(redactPath('/api/auth/keys'), '/api/auth/keys');
  t.equal(redactPath('/api/industrial/quota/deployment:d1'), '/api/industrial/quota/deployment:d1');
  t.equal(redactPath('/v1/chat/completions'), '/v1/chat/completions');
});
