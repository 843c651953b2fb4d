// TRUSTED_PROXIES: behind an ingress every connection comes from the proxy, and its
// X-Forwarded-For names the client; anyone else's X-Forwarded-For is a claim, not believed.
import t from 'tap';
import { request } from 'undici';
import { clientAddress, parseTrustedProxies } from '../../src/guard/client-address.ts';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';
import { ADMIN_TOKEN } from '../helpers/broker.ts';

t.test('the client is the first untrusted hop, read from the right, and only behind a trusted peer', async (t) => {
  const trusted = parseTrustedProxies('10.0.0.0/8, 192.168.1.7, fd00::/8')!;
  t.equal(clientAddress('10.1.2.3', '203.0.113.9', trusted), '203.0.113.9', 'one proxy');
  t.equal(clientAddress('10.1.2.3', '198.51.100.1, 203.0.113.9, 10.9.9.9', trusted), '203.0.113.9', 'past the trusted hops, not the leftmost (a client can write that one)');
  t.equal(clientAddress('203.0.113.5', '198.51.100.1', trusted), '203.0.113.5', "an untrusted peer's header is ignored");
  t.equal(clientAddress('10.1.2.3', undefined, trusted), '10.1.2.3', 'no header: the peer');
  t.equal(clientAddress('::ffff:10.1.2.3', '203.0.113.9', trusted), '203.0.113.9', 'an IPv4 peer as a dual-stack socket reports it');
  t.equal(clientAddress('fd00::1', '2001:db8::5', trusted), '2001:db8::5', 'IPv6');
  t.equal(clientAddress('10.1.2.3', '10.2.2.2, 10.3.3.3', trusted), '10.2.2.2', 'every hop trusted: the leftmost');
  t.equal(clientAddress('10.1.2.3', 'unknown, 10.3.3.3', trusted), '10.3.3.3', 'a hop that is no address: nothing left of it is believed');
  t.equal(clientAddress('10.1.2.3', '203.0.113.9', undefined), '10.1.2.3', 'TRUSTED_PROXIES unset: the header is never read');
  t.equal(clientAddress('10.1.2.3', '203.0.113.9:51234', trusted), '203.0.113.9', 'a hop with its port (Azure Application Gateway)');
  t.equal(clientAddress('10.1.2.3', '[2001:db8::5]:443, 10.9.9.9:80', trusted), '2001:db8::5', 'an IPv6 hop in brackets, with its port');
  t.equal(parseTrustedProxies(' '), undefined);
  t.throws(() => parseTrustedProxies('10.0.0.0/33'), /prefix length/);
  t.throws(() => parseTrustedProxies('proxy.local'), /not an IP address/);
});

t.test('behind a trusted proxy each client has its own rate limit and admin lockout', async (t) => {
  const m = await startMock(t);
  const fleet = { modelGroups: { g: { deployments: [{ id: 'd1', provider: 'openai', url: m.url, model: 'm' }] } } };
  const env = { INFER_ENABLED: 'false', RATE_LIMIT_RPS: '1', RATE_LIMIT_BURST: '3', ADMIN_AUTH_MAX_FAILURES: '3' };
  const tb = await startFleetBroker(t, fleet, { ...env, TRUSTED_PROXIES: '127.0.0.1,::1' });
  const models = async (base: string, xff: string) => {
    const res = await fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: { 'x-forwarded-for': xff, 'content-type': 'application/json' }, body: JSON.stringify({ model: 'g', messages: [{ role: 'user', content: 'hi' }] }) });
    await res.arrayBuffer();
    return res.status;
  };
  const a = [];
  for (let i = 0; i < 5; i++) a.push(await models(tb.url, '198.51.100.1'));
  t.same(a.slice(0, 3), [200, 200, 200]);
  t.ok(a.slice(3).includes(429), `client A spent its burst: ${a.join(' ')}`);
  t.equal(await models(tb.url, '198.51.100.2'), 200, 'client B, through the same proxy, still has its own');
  for (let i = 0; i < 100 && !tb.logs.some((l) => l.msg === 'request' && l.client === '198.51.100.2'); i++) await new Promise((r) => setTimeout(r, 20));
  t.ok(tb.logs.some((l) => l.msg === 'request' && l.client === '198.51.100.2'), "client B's access line names it, not the proxy");
  // A proxy that adds its own X-Forwarded-For line (HAProxy) rather than appending: the lines are
  // one list. The last alone named the proxy, and every client behind it shared one limit.
  const twoLines = async (client: string): Promise<number> => {
    const res = await request(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: ['x-forwarded-for', client, 'x-forwarded-for', '127.0.0.1', 'content-type', 'application/json'], body: JSON.stringify({ model: 'g', messages: [{ role: 'user', content: 'hi' }] }) });
    await res.body.arrayBuffer();
    return res.statusCode;
  };
  const c = [];
  for (let i = 0; i < 5; i++) c.push(await twoLines('203.0.113.7'));
  t.ok(c.includes(429), `client C spent its burst: ${c.join(' ')}`);
  t.equal(await twoLines('203.0.113.8'), 200, 'client D, on two lines too, still has its own');
  // The lines keep their order: a client's own line (varying, a spoof) is left of the proxy's,
  // and the proxy's names the client (one fixed address): its limit is spent.
  const spoofs = [];
  for (let i = 0; i < 5; i++) {
    const res = await request(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: ['x-forwarded-for', `203.0.113.${100 + i}`, 'x-forwarded-for', '198.51.100.50', 'content-type', 'application/json'], body: JSON.stringify({ model: 'g', messages: [{ role: 'user', content: 'hi' }] }) });
    await res.body.arrayBuffer();
    spoofs.push(res.statusCode);
  }
  t.ok(spoofs.includes(429), `a client writing its own first line is still one client: ${spoofs.join(' ')}`);

  const adminAs = async (xff: string, token: string) => {
    const res = await fetch(`${tb.url}/api/industrial/flags`, { headers: { 'x-forwarded-for': xff, authorization: `Bearer ${token}` } });
    await res.arrayBuffer();
    return res.status;
  };
  for (let i = 0; i < 4; i++) await adminAs('198.51.100.66', 'wrong-token-' + i);
  t.equal(await adminAs('198.51.100.66', 'wrong-token-x'), 429, 'the guesser is locked out');
  t.equal(await adminAs('198.51.100.7', ADMIN_TOKEN), 200, 'another admin behind the proxy is not');
  // No credential at all guesses nothing (a crawler, a probe): it does not lock the address out.
  for (let i = 0; i < 6; i++) {
    const res = await fetch(`${tb.url}/api/industrial/flags`, { headers: { 'x-forwarded-for': '198.51.100.8' } });
    t.equal(res.status, 401);
    await res.arrayBuffer();
  }
  t.equal(await adminAs('198.51.100.8', ADMIN_TOKEN), 200, 'requests without a credential do not lock out the address');
  // A misspelt drain body (meant as an undrain) is refused, not read as a drain.
  const drain = await fetch(`${tb.url}/api/industrial/capacity/d1/drain`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ drainig: false }) });
  t.equal(drain.status, 400);
  t.match(await drain.text(), /unknown field drainig/);
  const cap = await (await fetch(`${tb.url}/api/industrial/capacity/d1`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json();
  t.notMatch(JSON.stringify(cap), /"draining":true/, 'd1 is not draining');

  // Without TRUSTED_PROXIES the header is a claim: one bucket for the connection's address.
  const plain = await startFleetBroker(t, fleet, env);
  const spoofed = [];
  for (let i = 0; i < 5; i++) spoofed.push(await models(plain.url, `198.51.100.${100 + i}`));
  t.ok(spoofed.includes(429), `a new X-Forwarded-For per request buys no new bucket: ${spoofed.join(' ')}`);
});
