// Admission on its own: the policies it applies to one typed request, with a fake clock.
import t from 'tap';
import { admit, type AdmissionPolicies } from '../../../src/sched/admission.ts';
import { readLlmRequest } from '../../../src/llm/request.ts';
import { QuotaLedger } from '../../../src/policy/quota.ts';
import { OutputPredictor } from '../../../src/policy/prediction.ts';
import type { ModelGroupConfig } from '../../../src/config/broker-config.ts';
import { DEFAULT_QOS } from '../../../src/policy/qos.ts';
import { FLAGS, type FlagSet } from '../../../src/config/flags.ts';
import { keyId } from '../../../src/guard/api-key.ts';

const group: ModelGroupConfig = { name: 'g', deployments: [] };
const flags: FlagSet = { ...FLAGS, quota_enforcement: true };
const now = () => 1_000_000;

function policies(quota: QuotaLedger): AdmissionPolicies {
  return {
    flags,
    qos: DEFAULT_QOS,
    keyPolicy: (k) => (k === 'sk-a' ? { tier: undefined, priority: undefined, label: undefined, rpm: undefined, tpm: 1000 } : undefined),
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
