// The Authorization scheme is case-insensitive (RFC 9110 §11.1): `bearer`, `BEARER` and
// `Bearer` carry the same token, for client keys and admin credentials alike.
import t from 'tap';
import { apiKeyOf, bearerToken } from '../../src/guard/api-key.ts';

t.test('bearerToken reads any case of the scheme, and nothing else', async (t) => {
  for (const scheme of ['Bearer', 'bearer', 'BEARER', 'bEaReR']) t.equal(bearerToken(`${scheme} tok-1`), 'tok-1', scheme);
  for (const bad of [undefined, '', 'Bearer', 'Bearer ', 'Basic dXNlcjpwYXNz', 'Bearertok', 'Token tok-1']) t.equal(bearerToken(bad), undefined, JSON.stringify(bad));
  t.equal(apiKeyOf({ authorization: 'bearer sk-1' }), 'sk-1');
  t.equal(apiKeyOf({ 'x-api-key': 'sk-2', authorization: 'bearer sk-1' }), 'sk-2', 'x-api-key first');
});
