// Admission on its own: the policies it applies to one typed request, with a fake clock.
import t from 'tap';
import { admit as admitAny, type Admitted, type AdmissionPolicies } from '../../../src/sched/admission.ts';
import { readLlmRequest } from '../../../src/llm/request.ts';
import { QuotaLedger } from '../../../src/policy/quota.ts';
import { OutputPredictor } from '../../../src/policy/prediction.ts';
import type { ModelGroupConfig } from '../../../src/config/broker-config.ts';
import { DEFAULT_QOS } from '../../../src/policy/qos.ts';
import { FLAGS, type FlagSet } from '../../../src/config/flags.ts';
import { keyId } from '../../../src/guard/api-key.ts';

const group: ModelGroupConfig = { name: 'g', deployments: [] };
/** Admission without a lease to wait for answers at once. */
const admit = (...a: Parameters<typeof admitAny>): Admitted => {
  const r = admitAny(...a);
  if (r instanceof Promise) throw new Error('admission waited with no lease to wait for');
  return r;
};
const flags: FlagSet = { ...FLAGS, quota_enforcement: true };
const now = () => 1_000_000;

function policies(quota: QuotaLedger): AdmissionPolicies {
  return {
    flags,
    qos: DEFAULT_QOS,
    keyPolicy: (k) => (k === 'sk-a' ? { tier: undefined, priority: undefined, label: undefined, rpm: undefined, tpm: 1000 } : undefined),
    keyPolicyById: () => undefined,
    predictor: new OutputPredictor(),
    quota,
    defaultOutputTokens: 256,
    stickyPrefixBytes: 2048,
    now,
    onKeyQuotaRejection() {},
    admittedLabel: (l) => l === 'nightly',
  };
}

const request = (body: Record<string, unknown>) =>
  readLlmRequest({ id: 'r', method: 'POST', path: '/v1/chat/completions', query: '', headers: { 'x-api-key': 'sk-a' }, remoteAddress: '127.0.0.1', startedAt: 0 }, 'openai', 'chat', { model: 'g', messages: [{ role: 'user', content: 'abcd' }], ...body });

t.test('quotas reserve n × the output, and the key is named by its id', async (t) => {
  const quota = new QuotaLedger(now);
  quota.setLimits(`key:${keyId('sk-a')}`, { tpm: 1000 });
  const one = admit(policies(quota), request({ max_tokens: 100 }), group);
  t.equal(one.reserveTokens, 1 + 100);
  const five = admit(policies(quota), request({ max_tokens: 100, n: 5 }), group);
  t.equal(five.reserveTokens, 1 + 500);
  t.equal(quota.usage(`key:${keyId('sk-a')}`).tpm, 101 + 501, 'both reserved against the key id');
  t.throws(() => admit(policies(quota), request({ max_tokens: 100, n: 4 }), group), { code: 'quota_exceeded' }, 'n × max_tokens no longer fits');
});

t.test('labels: a known key may name one, a keyless request only a configured one; others count as other', async (t) => {
  const p = policies(new QuotaLedger(now));
  const req = (headers: Record<string, string>) => ({ id: 'r', method: 'POST', path: '/v1/chat/completions', query: '', headers, remoteAddress: '127.0.0.1', startedAt: 0 });
  const label = (headers: Record<string, string>) => admit(p, readLlmRequest(req(headers), 'openai', 'chat', { model: 'g', messages: [{ role: 'user', content: 'x' }] }), group).label;
  t.equal(label({ 'x-broker-label': 'nightly' }), 'nightly', 'configured: admitted');
  t.equal(label({ 'x-broker-label': 'made-up-1' }), 'other', 'keyless, not configured: other');
  t.equal(label({ 'x-broker-label': 'made-up-2', 'x-api-key': 'sk-a' }), 'made-up-2', 'a known key may name its own');
  t.equal(label({ 'x-api-key': 'sk-a' }), `key:${keyId('sk-a')}`, 'a known key without a label: its id');
  t.equal(label({ 'x-api-key': 'sk-random-123' }), 'openai:chat', 'an unknown key gets no profile of its own');
});

t.test('with leases (replicas): a request behind a spent lease waits for its top-up instead of a 429; a dry cluster refuses at once', async (t) => {
  const minute = Math.floor(now() / 60_000);
  const quota = new QuotaLedger(now);
  quota.setCluster(true);
  const subject = `key:${keyId('sk-a')}`;
  quota.setLimits(subject, { tpm: 1000 });
  let refused = 0;
  const p = { ...policies(quota), onKeyQuotaRejection: () => refused++ };
  // The first request of a key with no lease yet is lent its budget: the lease is in debt.
  const first = admit(p, request({ max_tokens: 100 }), group);
  t.equal(first.reserveTokens, 101);
  const second = admitAny(p, request({ max_tokens: 100 }), group);
  t.ok(second instanceof Promise, 'the second waits: a top-up is on its way');
  // The control plane's tick: the debt (101) and two blocks (200).
  setTimeout(() => quota.grantLease(subject, minute, 0, 301, false), 30);
  t.equal((await second).reserveTokens, 101, 'admitted once the lease landed');
  t.equal(refused, 0);

  // No top-up comes: refused after the wait, counted once.
  const third = admitAny(p, request({ max_tokens: 100 }), group);
  const fourth = admitAny(p, request({ max_tokens: 100 }), group);
  t.ok(!(third instanceof Promise), '99 left: the third is lent the rest at once');
  await t.rejects(Promise.resolve(fourth), { code: 'quota_exceeded' });
  t.equal(refused, 1, 'one refusal, counted once');

  // The cluster is dry this minute: no top-up will come, so no wait.
  quota.grantLease(subject, minute, 0, 0, true);
  t.throws(() => admitAny(p, request({ max_tokens: 100 }), group), { code: 'quota_exceeded' }, 'dry: refused at once');
  t.equal(refused, 2);
});

t.test('without max_tokens the output guess is defaultOutputTokens, and never more than the key tpm leaves: a small key is not refused for good', async (t) => {
  const subject = `key:${keyId('sk-a')}`;
  for (const prediction of [false, true]) {
    const quota = new QuotaLedger(now);
    quota.setLimits(subject, { tpm: 400 });
    const p = { ...policies(quota), flags: { ...flags, output_prediction: prediction } };
    const a = admit(p, request({}), group);
    t.equal(a.predictedOutput, 256, `prediction ${prediction ? 'on' : 'off'}, no history: the scheduler's default`);
    t.equal(a.reserveTokens, 1 + 256);
  }
  const quota = new QuotaLedger(now);
  quota.setLimits(subject, { tpm: 100 });
  const p = { ...policies(quota), flags: { ...flags, output_prediction: true } };
  const small = admit(p, request({}), group);
  t.equal(small.reserveTokens, 100, 'the guess capped at what tpm leaves after the prompt');
  t.throws(() => admit(p, request({ max_tokens: 500 }), group), { code: 'quota_exceeded', message: /can never fit/ }, "the client's own max_tokens is not a guess");
  // A QoS tier's output cap (realtime: 2,048) bounds the output; it is not the client's max_tokens.
  const fresh = new QuotaLedger(now);
  fresh.setLimits(subject, { tpm: 100 });
  const tiered = admit({ ...policies(fresh), flags: { ...flags, output_prediction: true, qos_switching: true }, qos: { ...DEFAULT_QOS, defaultTier: 'realtime' } }, request({}), group);
  t.equal(tiered.reserveTokens, 100, "a tier's cap is capped by the tpm too");
  // ...and it is no guess: without max_tokens a realtime request reserves defaultOutputTokens
  // (it reserved the whole 2,048, and a key's third request a minute was refused).
  for (const prediction of [false, true]) {
    const roomy = new QuotaLedger(now);
    roomy.setLimits(subject, { tpm: 5000 });
    const rt = { ...policies(roomy), flags: { ...flags, output_prediction: prediction, qos_switching: true }, qos: { ...DEFAULT_QOS, defaultTier: 'realtime' } };
    t.equal(admit(rt, request({}), group).reserveTokens, 1 + 256, `prediction ${prediction ? 'on' : 'off'}: a realtime guess is the default`);
    t.equal(admit(rt, request({ max_tokens: 4000 }), group).reserveTokens, 1 + 2048, "the client's max_tokens above the cap: the cap");
  }
  // A learned output above the tier's cap is bounded by it.
  const learned = new QuotaLedger(now);
  learned.setLimits(subject, { tpm: 10_000 });
  const p2 = { ...policies(learned), flags: { ...flags, output_prediction: true, qos_switching: true }, qos: { ...DEFAULT_QOS, defaultTier: 'realtime' } };
  for (let i = 0; i < 10; i++) p2.predictor.observe(`key:${keyId('sk-a')}`, 3000, 3000);
  t.equal(admit(p2, request({}), group).predictedOutput, 2048, 'a learned guess past the cap: the cap');
});
