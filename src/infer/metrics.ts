// The batcher's and admission queue's metrics, modelled on Triton's: inference count
// (images) against execution count (session.run calls), the batch-size histogram
// (inference_batch_size, declared with the others in obs/metrics.ts), how long a
// batch took to form, and admission rejections. Registered once per registry.
import { Counter, Histogram } from 'prom-client';
import type { Metrics } from '../obs/metrics.ts';
import { withFastLabels } from '../obs/fast-labels.ts';

const WAIT_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];

function create(m: Metrics) {
  const r = [m.registry];
  return {
    /** nv_inference_count: images inferred. */
    inferenceCount: new Counter({ name: 'inference_count_total', help: 'Images inferred (a batch of 8 counts 8)', labelNames: ['model'] as const, registers: r }),
    /** nv_inference_exec_count: session.run calls. */
    execCount: new Counter({ name: 'inference_exec_count_total', help: 'Model executions (session.run calls; a batch of 8 counts 1)', labelNames: ['model'] as const, registers: r }),
    batchWait: new Histogram({
      name: 'inference_batch_wait_seconds',
      help: "How long a batch's oldest request waited in the admission queue before the batch left",
      labelNames: ['model'] as const,
      buckets: WAIT_BUCKETS,
      registers: r,
    }),
    /** Per execution, not per request: their sum over wall time is how busy the workers were. */
    execDuration: new Histogram({
      name: 'inference_exec_duration_seconds',
      help: 'Worker time per batch, by stage (decode: all images of the batch; compute: session.run)',
      labelNames: ['model', 'stage'] as const,
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: r,
    }),
    admissionRejected: new Counter({
      name: 'inference_admission_rejections_total',
      help: 'Requests refused by the admission queue: full (503 overloaded), shed from a full queue for a request of higher priority (503 overloaded), or waited too long (504 queue_timeout)',
      labelNames: ['model', 'reason'] as const,
      registers: r,
    }),
  };
}

export type InferMetrics = ReturnType<typeof create>;
const byMetrics = new WeakMap<Metrics, InferMetrics>();

export function inferMetrics(m: Metrics): InferMetrics {
  let im = byMetrics.get(m);
  if (im === undefined) byMetrics.set(m, (im = withFastLabels(create(m))));
  return im;
}
