// The image inference service: A/B split, sticky arms, shadow, canary with automatic
// rollback, warmup and promote, over a worker pool. Protocol-free: the HTTP (and
// later gRPC) fronts call infer() and read the runtime config.
import { performance } from 'node:perf_hooks';
import { BrokerError } from '../errors.ts';
import type { Logger } from '../obs/logger.ts';
import type { Metrics } from '../obs/metrics.ts';
import { chooseArm, shareOfB, type Arm, type SplitState } from './arms.ts';
import { CanaryJudge, type CanaryThresholds } from './canary.ts';
import type { LoadedModel } from './manifest.ts';
import { inferMetrics, type InferMetrics } from './metrics.ts';
import { clientGone, type InferPool, type RunResult } from './pool.ts';
import type { AbortLike } from '../abort.ts';
import { largestImageSize, MAX_BATCH_INPUT_BYTES, type ModelProblems, type Prediction } from './protocol.ts';
import type { TraceContext } from '../obs/trace/context.ts';

export interface RuntimeConfig extends SplitState {
  readonly shadowEnabled: boolean;
  /** Set when the canary rolled itself back: when and why. */
  readonly canaryRollback: { readonly at: string; readonly reason: string } | null;
}

export interface InferInput {
  /** Image bytes; transferred to a worker, unusable afterwards. */
  readonly image: Buffer;
  readonly imgSize: number | undefined;
  readonly topK: number | undefined;
  readonly cookieArm: string | undefined;
  /** x-broker-priority, 0-9 (higher first in the admission queue); default 5. */
  readonly priority?: number | undefined;
  /** The request's span context when it is traced: the inference spans go under it. */
  readonly trace?: TraceContext | undefined;
  /** Aborted when the client goes: the image leaves the queue, and the request counts as neither success nor failure. */
  readonly signal?: AbortLike | undefined;
}

export interface InferReply {
  readonly arm: Arm;
  readonly model: string;
  readonly version: string;
  readonly predictions: Prediction[];
  /** queue_ms: admission queue + batch fill + hand-off; decode_ms and infer_ms are the batch's. */
  readonly timings: { decode_ms: number; queue_ms: number; infer_ms: number; total_ms: number };
  /** Images in the session.run that answered. */
  readonly batch_size: number;
  /** Served by the only arm that takes the request's img_size (whichever the split drew): no sticky cookie for it. */
  readonly pinned?: true;
}

/** The arm that serves one request, with the pool and model it runs on (pinned across a promote). */
export interface ArmChoice {
  readonly arm: Arm;
  /** 'version': the client named the arm's version (v2), so no split, sticky cookie or shadow. */
  readonly reason: 'sticky' | 'canary' | 'weighted' | 'version';
  readonly pool: InferPool;
  readonly model: LoadedModel;
}

/** Items of one request, all on the chosen arm (v2 sends N images or N tensor rows at once). */
export interface ItemsInput {
  /** Per item: encoded image bytes, or with `tensor` one item of the model's float32 input. Transferred. */
  readonly items: readonly Buffer[];
  readonly tensor: boolean;
  /** Resize target (images) or spatial size (tensors) of a dynamic-size model; undefined: the model's own. */
  readonly size: number | undefined;
  /** Top-k predictions per item (0: none). */
  readonly topK: number;
  /** Return each item's raw output row. */
  readonly scores: boolean;
  readonly priority?: number | undefined;
  /** The request's own queue timeout (v2 schedule policy), when shorter than the model's. */
  readonly timeoutMs?: number | undefined;
  readonly trace?: TraceContext | undefined;
  readonly signal?: AbortLike | undefined;
  /**
   * Whether the results can be answered, before they count as a success: a throw fails the
   * request as the model's failure (v2 JSON cannot carry a non-finite score).
   */
  readonly check?: ((results: readonly RunResult[]) => void) | undefined;
}

export interface ItemsReply {
  readonly results: RunResult[];
  readonly totalMs: number;
}

export interface InferServiceDeps {
  readonly initial: RuntimeConfig;
  readonly canary: CanaryThresholds;
  /** Builds a pool serving these models (A and B). */
  readonly makePool: (models: { A: LoadedModel; B: LoadedModel }) => InferPool;
  readonly models: { A: LoadedModel; B: LoadedModel };
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly now?: () => number;
  readonly random?: () => number;
}

const round = (ms: number): number => Math.round(ms * 1000) / 1000;

export class InferService {
  private config: RuntimeConfig;
  private pool: InferPool;
  private readonly judge: CanaryJudge;
  private readonly now: () => number;
  private readonly random: () => number;
  private promoting: Promise<boolean> | undefined;
  /** The pair the last promote replaced, for a rollback; undefined before any promote, and after a rollback. */
  private replaced: { A: LoadedModel; B: LoadedModel } | undefined;
  /** Promotes and rollbacks one at a time: each swaps the pool the one before it left. */
  private swaps: Promise<unknown> = Promise.resolve();
  /** When a failed shadow run was last logged (SHADOW_WARN_EVERY_MS apart). */
  private shadowWarnedAt = -Infinity;
  private readonly im: InferMetrics;
  /** Models of the current pool that cannot run, and why; null until the workers have checked them. */
  private problems: ModelProblems | null = null;
  /** The first pool's check: resolves once it is ready and checked. */
  private readonly checked: Promise<ModelProblems>;

  constructor(private readonly deps: InferServiceDeps) {
    this.config = Object.freeze({ ...deps.initial });
    this.im = inferMetrics(deps.metrics);
    this.pool = this.newPool(deps.models);
    const first = this.pool;
    this.checked = this.check(first).then((p) => {
      if (this.pool === first) this.problems = p;
      return p;
    });
    // Read through waitReady() too; a check that could not run is said here (the models then serve unchecked).
    this.checked.catch((err: unknown) => deps.logger.error({ err }, 'inference: the model check did not run'));
    this.judge = new CanaryJudge(deps.canary);
    this.now = deps.now ?? Date.now;
    this.random = deps.random ?? Math.random;
  }

  private newPool(models: { A: LoadedModel; B: LoadedModel }): InferPool {
    const pool = this.deps.makePool(models);
    const { inferBatch } = this.deps.metrics;
    const im = this.im;
    pool.onExecute((e) => {
      const name = pool.models[e.model]!.manifest.name;
      im.inferenceCount.labels(name).inc(e.batchSize);
      im.execCount.labels(name).inc(e.executions);
      // Every session.run by its size: a batch that failed whole ran once at its size, then
      // once per image (executions - 1 runs of 1).
      if (e.executions > 0) inferBatch.labels(name).observe(e.batchSize);
      for (let i = 1; i < e.executions; i++) inferBatch.labels(name).observe(1);
      im.batchWait.labels(name).observe(e.batchWaitMs / 1000);
      im.execDuration.labels(name, 'decode').observe(e.decodeMs / 1000);
      im.execDuration.labels(name, 'compute').observe(e.inferMs / 1000);
    });
    return pool;
  }

  get runtimeConfig(): RuntimeConfig {
    return this.config;
  }

  get models(): { A: LoadedModel; B: LoadedModel } {
    return this.pool.models as { A: LoadedModel; B: LoadedModel };
  }

  /**
   * The workers loaded the models, and A (the model that serves) is not known not to fit
   * its manifest. Readiness does not wait for the check's answer (a task behind the pool's
   * own start): a misfit A is said a moment later, and stops `npm start` (main.ts).
   */
  get ready(): boolean {
    return this.pool.ready && this.problems?.['A'] === undefined;
  }

  /** Why a model cannot run, by arm (for /ready); empty when every model runs or before the check. */
  get modelProblems(): Readonly<Record<string, string>> {
    const out: Record<string, string> = {};
    for (const [arm, p] of Object.entries(this.problems ?? {})) out[arm] = p.message;
    return out;
  }

  /**
   * Waits for the pool, then asks a worker which models could not run (graph-check.ts)
   * and logs each, as what `use` makes of it (a start's, a promote's, which never served, or
   * a rollback's): a manifest that does not fit its graph is said once, not in every request's 500.
   */
  private async check(pool: InferPool, use: 'start' | 'promote' | 'rollback' = 'start'): Promise<ModelProblems> {
    await pool.waitReady();
    let problems: ModelProblems | undefined;
    // A worker lost while answering (it is replaced): ask again, a few times.
    for (let attempt = 0; problems === undefined; attempt++) {
      try {
        problems = await pool.problems();
      } catch (err) {
        if (attempt >= 4) throw err;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    await this.unbatchBroken(pool, problems);
    // A promote's pool holds B's model as both arms: one problem, said once, about the promote.
    if (use === 'promote') {
      const p = problems['A'];
      if (p !== undefined) {
        const { manifest, path } = pool.models['A']!;
        this.deps.logger.error({ model: manifest.name, version: manifest.version, path, ...(p.detail !== undefined ? { err: p.detail } : {}) }, `promote refused, A keeps serving: ${p.message}`);
      }
      return problems;
    }
    for (const [arm, p] of Object.entries(problems)) {
      const { manifest, path } = pool.models[arm]!;
      // An A that does not run: the broker does not start (main.ts), or the rollback is refused (swap).
      const outcome = arm !== 'A' ? 'its requests answer 503 model_unavailable' : use === 'start' ? 'A serves every request, so the broker cannot start' : 'rollback refused, the models serving keep serving';
      this.deps.logger.error({ arm, model: manifest.name, version: manifest.version, path, ...(p.detail !== undefined ? { err: p.detail } : {}) }, `${p.message}; ${outcome}`);
    }
    return problems;
  }

  /**
   * A model that ran one image at its warm-up but not a batch of max_batch_size: every batch
   * would fail and run again image by image. It gets batches of 1 (what v2's config then says),
   * and the operator a warning to fix the manifest or the graph.
   */
  private async unbatchBroken(pool: InferPool, problems: ModelProblems): Promise<void> {
    const found = await pool.unbatchable().catch(() => ({}) as Record<string, string>);
    for (const [arm, err] of Object.entries(found)) {
      if (problems[arm] !== undefined) continue;
      const { manifest, path } = pool.models[arm]!;
      pool.unbatch(arm);
      this.deps.logger.warn({ arm, model: manifest.name, version: manifest.version, path, err }, `model ${manifest.name} failed its warm-up run at batching.max_batch_size ${manifest.batching.maxBatchSize}: it runs one image at a time (set max_batch_size to 1, or give the graph a batch dimension it can run)`);
    }
  }

  get currentPool(): InferPool {
    return this.pool;
  }

  /** Resolves once the models are loaded and checked; rejects with model_unavailable when A cannot run. */
  async waitReady(): Promise<void> {
    // A check that could not run was logged (constructor): the pool's own readiness decides.
    const problems = await this.checked.catch(() => undefined);
    const a = problems?.['A'];
    if (a !== undefined && this.problems === problems) throw new BrokerError('model_unavailable', `${a.message} (${this.deps.models.A.path})`);
    await this.pool.waitReady();
  }

  /** Validated partial update from the admin API. */
  update(patch: Partial<Pick<RuntimeConfig, 'abWeightA' | 'abWeightB' | 'shadowEnabled' | 'canaryEnabled' | 'canaryPercent'>>): RuntimeConfig {
    const next = { ...this.config, ...patch };
    // The field the caller set, when only one was: the one at fault.
    const field = patch.abWeightA === undefined && patch.abWeightB !== undefined ? 'ab_weight_b' : 'ab_weight_a';
    if (next.abWeightA + next.abWeightB <= 0) throw new BrokerError('invalid_request', 'ab_weight_a + ab_weight_b must be greater than 0', { details: { field } });
    // Turning the canary on again, or giving it a share, starts a fresh judgement.
    if (patch.canaryEnabled === true || patch.canaryPercent !== undefined) {
      next.canaryRollback = null;
      this.judge.reset();
    }
    this.config = Object.freeze(next);
    this.deps.logger.info({ config: this.config }, 'runtime config updated');
    return this.config;
  }

  /**
   * Whether a request the split did not send to `arm` may still go there because only it
   * takes the request's input (an img_size, a v2 tensor's shape): not when the split gives it
   * no traffic (B at weight 0, a canary rolled back), nor when it cannot serve.
   */
  takesTraffic(arm: Arm): boolean {
    const share = shareOfB(this.config);
    return (arm === 'B' ? share > 0 : share < 1) && this.modelProblems[arm] === undefined;
  }

  async infer(input: InferInput): Promise<InferReply> {
    let choice = this.choose(input.cookieArm);
    let size: number | undefined;
    try {
      size = checkSize(input.imgSize, choice.model);
    } catch (err) {
      // A and B take different sizes: an img_size only the other arm takes goes to it, as
      // if named (no cookie, no shadow), rather than a 400 that depends on the split's draw.
      // Not to an arm the split gives no traffic (B at weight 0, a canary rolled back).
      const other: Arm = choice.arm === 'A' ? 'B' : 'A';
      if (!this.takesTraffic(other) || !fitsSize(input.imgSize, this.models[other])) throw err;
      choice = this.choose(undefined, other);
      size = checkSize(input.imgSize, choice.model);
    }
    const { manifest } = choice.model;
    const topK = Math.min(input.topK ?? 5, manifest.labels.length);
    const { results, totalMs } = await this.run(choice, { items: [input.image], tensor: false, size, topK, scores: false, priority: input.priority, trace: input.trace, signal: input.signal });
    const result = results[0]!;
    return {
      arm: choice.arm,
      model: manifest.name,
      version: manifest.version,
      predictions: result.predictions,
      timings: { decode_ms: round(result.decodeMs), queue_ms: round(Math.max(0, result.queueMs)), infer_ms: round(result.inferMs), total_ms: round(totalMs) },
      batch_size: result.batchSize,
      // Only this arm takes the request's size: its answer says nothing of the split, so no cookie.
      ...(choice.reason === 'version' || (input.imgSize !== undefined && !fitsSize(input.imgSize, this.models[choice.arm === 'A' ? 'B' : 'A'])) ? { pinned: true as const } : {}),
    };
  }

  /**
   * Which arm serves a request: `named` when the client named it (v2 versions), else the
   * A/B policy (sticky cookie, weights, canary). Nothing is counted until run().
   */
  choose(cookieArm: string | undefined, named?: Arm): ArmChoice {
    const pool = this.pool;
    const { arm, reason } = named !== undefined ? { arm: named, reason: 'version' as const } : chooseArm(this.config, cookieArm, this.random());
    return { arm, reason, pool, model: (arm === 'A' ? pool.models.A : pool.models.B)! };
  }

  /**
   * Runs the items of one request on the chosen arm, each through the admission queue and
   * batcher; the first failure fails the request. One request in the metrics and the canary
   * judge whatever its item count; B shadows A's items when the split chose A.
   */
  async run(choice: ArmChoice, input: ItemsInput): Promise<ItemsReply> {
    const t0 = performance.now();
    const { arm, pool } = choice;
    const { manifest } = choice.model;
    const m = this.deps.metrics;
    m.inferArm.labels(arm, choice.reason).inc();

    // After a promote A and B are the same model: a shadow run would only run it twice.
    const mayShadow = this.config.shadowEnabled && arm === 'A' && choice.reason !== 'version' && !sameModel(pool);
    const shadowing = mayShadow && (!input.tensor || sameInput(pool));
    // A tensor made for A's input that B does not take: B cannot shadow it, and says so.
    if (mayShadow && !shadowing) m.shadowRequests.labels('skipped').inc(input.items.length);
    const shadowCopies = shadowing ? input.items.map((b) => Buffer.from(b)) : undefined;
    const opts = { tensor: input.tensor, scores: input.scores, trace: input.trace, signal: input.signal, ...(input.timeoutMs !== undefined ? { timeoutMs: input.timeoutMs } : {}) };
    let results: RunResult[];
    try {
      // Several items (a v2 batch) are admitted whole or not at all, and fail as one.
      results = input.items.length === 1
        ? [await pool.run(arm, transferable(input.items[0]!), input.size, input.topK, input.priority, opts)]
        : await pool.runAll(arm, input.items.map(transferable), input.size, input.topK, input.priority, opts);
      if (input.signal?.aborted !== true) input.check?.(results);
    } catch (err) {
      const e = err as BrokerError;
      // The client left: one outcome, its own (499 at the front); not a failure of the model.
      if (input.signal?.aborted === true) throw err;
      if (e.code === 'overloaded' || e.code === 'queue_timeout') this.im.admissionRejected.labels(manifest.name, e.code === 'queue_timeout' ? 'timeout' : e.details?.['shed'] === true ? 'shed' : 'full').inc();
      // A request the queue could never hold (more items than its places) is the client's to
      // split: refused for its form, as one refused at the front, not a failure of the model.
      if (e.code !== 'invalid_request') m.inferFailure.labels(manifest.name, manifest.version, arm, e.code ?? 'internal').inc();
      if (e.details?.['decoder'] !== undefined) this.deps.logger.warn({ decoder: e.details['decoder'], model: manifest.name, arm }, 'image decoder refused the bytes');
      // A model refused at load (model_unavailable) was said once then; a run that fails is said each time.
      else if (e.details?.['runtime'] !== undefined && e.code === 'internal') this.deps.logger.error({ runtime: e.details['runtime'], model: manifest.name, arm }, 'the model failed to run');
      // Client mistakes say nothing about the model; only server-side failures count against B.
      // Admission outcomes (B's own queue full, a wait past the queue's or the client's own
      // timeout) say how loaded the arm's queue is, not how the model does: a burst of requests
      // naming B's version must not roll the canary back.
      if (e.status >= 500 && e.code !== 'overloaded' && e.code !== 'queue_timeout') this.observe(arm, false, performance.now() - t0);
      throw err;
    }
    const total = performance.now() - t0;
    // Computed, but the client left meanwhile: not a success either.
    if (input.signal?.aborted === true) throw clientGone();
    // The slowest item stands for the request.
    const worst = results.reduce((a, r) => (r.queueMs + r.decodeMs + r.inferMs > a.queueMs + a.decodeMs + a.inferMs ? r : a));
    m.inferSuccess.labels(manifest.name, manifest.version, arm).inc();
    m.inferQueue.labels(manifest.name, arm).observe(worst.queueMs / 1000);
    m.inferDecode.labels(manifest.name, arm).observe(worst.decodeMs / 1000);
    m.inferCompute.labels(manifest.name, arm).observe(worst.inferMs / 1000);
    // The model's own time per image (decode and compute, over the images of the task that
    // ran it), not the queue's nor the batch's: a burst that only B's callers send fills B's
    // queue and batches, which says nothing about B.
    this.observe(arm, true, results.reduce((a, r) => Math.max(a, (r.decodeMs + r.inferMs) / Math.max(1, r.taskImages)), 0));
    if (shadowCopies !== undefined) {
      for (const [i, copy] of shadowCopies.entries()) this.shadow(copy, input.size, input.tensor, topLabel(results[i]!, manifest.labels));
    }
    return { results, totalMs: total };
  }

  /** B runs on a copy after A answered; its result only feeds metrics. */
  private shadow(image: Buffer, size: number | undefined, tensor: boolean, topA: string | undefined): void {
    const m = this.deps.metrics;
    const pool = this.pool;
    // Shadow traffic must never delay real traffic: skip it when requests are waiting.
    if (pool.queueSize > 0) {
      m.shadowRequests.labels('skipped').inc();
      return;
    }
    const t0 = performance.now();
    setImmediate(() => {
      // Lowest priority: a shadow run goes after real requests (unless it waited a second per
      // level, the admission queue's aging; it was sent only because nothing was waiting).
      pool.run('B', transferable(image), size, 1, 0, tensor ? { tensor } : undefined).then(
        (r) => {
          m.shadowLatency.observe((performance.now() - t0) / 1000);
          m.shadowRequests.labels('ok').inc();
          // By label: a B whose classes come in another order (or more of them) agrees when it names the same one.
          if (topA !== undefined && topLabel(r, this.models.B.manifest.labels) === topA) m.shadowAgreement.inc();
          else m.shadowDisagreement.inc();
        },
        (err: BrokerError) => {
          // Shed for load (B's queue full, its wait spent), or cut by a promote that replaced
          // the pool it ran on: not B failing, so not an error an operator should chase.
          if (err.code === 'overloaded' || err.code === 'queue_timeout' || err.code === 'shutting_down' || pool !== this.pool) {
            m.shadowRequests.labels('skipped').inc();
            return;
          }
          m.shadowRequests.labels('error').inc();
          const now = this.now();
          if (now - this.shadowWarnedAt < SHADOW_WARN_EVERY_MS) return;
          this.shadowWarnedAt = now;
          this.deps.logger.warn({ err: err.message, code: err.code }, 'shadow run failed on B (logged at most once a minute; inference_shadow_requests_total{outcome="error"} counts them)');
        },
      );
    });
  }

  private observe(arm: Arm, ok: boolean, ms: number): void {
    if (!this.config.canaryEnabled || this.config.canaryRollback !== null) return;
    const now = this.now();
    this.judge.record(arm, ok, ms, now);
    if (arm !== 'B') return;
    const reason = this.judge.verdict(now);
    if (reason === undefined) return;
    this.config = Object.freeze({ ...this.config, canaryPercent: 0, canaryRollback: { at: new Date(now).toISOString(), reason } });
    this.deps.metrics.canaryRollbacks.inc();
    this.deps.logger.warn({ reason, b_share: shareOfB(this.config) }, 'canary rolled back: B gets no more traffic');
  }

  /** Every model run once in every worker; `unavailable`: the arms that could not run, and why (their requests answer 503). */
  async warmup(): Promise<{ runs: number; unavailable: Record<string, string> }> {
    const pool = this.pool;
    const runs = await pool.warmup();
    // A worker lost between the two (it is replaced): the warm-up ran; say what the start-up check found.
    const problems = await pool.problems().catch(() => null);
    if (problems === null) return { runs, unavailable: { ...this.modelProblems } };
    return { runs, unavailable: Object.fromEntries(Object.entries(problems).map(([arm, p]) => [arm, p.message])) };
  }

  /**
   * B's model becomes A. A new pool loads and warms the new pair while the old one
   * keeps serving; then traffic switches and the old pool finishes what it started.
   */
  promote(): Promise<boolean> {
    // A and B are one model already (promoted before): nothing to do, no pool to rebuild.
    if (this.promoting === undefined && sameModel(this.pool)) return Promise.resolve(false);
    this.promoting ??= this.oneAtATime(async () => {
      try {
        if (sameModel(this.pool)) return false;
        const old = this.pool;
        const b = old.models.B!;
        await this.swap({ A: b, B: b }, true);
        this.replaced = { A: old.models.A!, B: b };
        this.deps.logger.info({ model: b.manifest.name, version: b.manifest.version }, 'promoted B to A');
        return true;
      } finally {
        this.promoting = undefined;
      }
    });
    return this.promoting;
  }

  /**
   * Undoes the last promote: A and B are again the pair it replaced (the old A serving, the
   * promoted model as B), through a new pool as a promote's. False when there is none to undo
   * (none since start, or undone already): a process keeps only the pair it replaced last.
   */
  rollback(): Promise<boolean> {
    return this.oneAtATime(async () => {
      const pair = this.replaced;
      if (pair === undefined) return false;
      await this.swap(pair, false);
      this.replaced = undefined;
      this.deps.logger.info({ model: pair.A.manifest.name, version: pair.A.manifest.version }, 'rolled back: A serves the model it served before the promote');
      return true;
    });
  }

  private oneAtATime<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.swaps.then(fn, fn);
    this.swaps = run.catch(() => undefined);
    return run;
  }

  /**
   * A new pool loads and checks `models` while the old one keeps serving; then traffic
   * switches and the old pool finishes what it started. A's model must run, or nothing changes.
   * `candidate`: a promote's pool (B's model as both arms), whose problem is said as the promote's.
   */
  private async swap(models: { A: LoadedModel; B: LoadedModel }, candidate: boolean): Promise<void> {
    const old = this.pool;
    const next = this.newPool(models);
    let problems: ModelProblems;
    try {
      problems = await this.check(next, candidate ? 'promote' : 'rollback');
      // The model about to serve A's traffic must run.
      const p = problems['A'];
      if (p !== undefined) throw new BrokerError('model_unavailable', candidate ? `B cannot be promoted: ${p.message}` : `the model to roll back to cannot run: ${p.message}`);
    } catch (err) {
      await next.close();
      throw err;
    }
    this.pool = next;
    this.problems = problems;
    this.judge.reset();
    this.config = Object.freeze({ ...this.config, canaryRollback: null });
    await old.close();
  }

  /** Shutdown past its grace period: requests still queued answer 503 shutting_down instead of a closed connection. */
  abortQueued(): void {
    this.pool.abortQueued(new BrokerError('shutting_down', 'the broker shut down before the image was served'));
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}

export function checkSize(imgSize: number | undefined, model: Pick<LoadedModel, 'manifest'>): number | undefined {
  const { input, name } = model.manifest;
  if (imgSize === undefined) return undefined;
  if (input.height !== null) {
    if (input.height !== input.width) {
      throw new BrokerError('invalid_img_size', `model ${name} takes a fixed ${input.height}x${input.width} input (height x width), which no square img_size names: leave img_size out, got ${imgSize}`, { details: { field: 'img_size' } });
    }
    if (imgSize !== input.height) {
      throw new BrokerError('invalid_img_size', `img_size must be ${input.height} for model ${name} (fixed ${input.height}x${input.width} input), got ${imgSize}`, { details: { field: 'img_size' } });
    }
    return undefined;
  }
  // One image's input tensor is bounded as a batch's is: a 90-byte image resized to a large
  // img_size is as much memory as a huge one (8192² with 3 channels: 805 MB of floats).
  const most = Math.min(input.maxSize, largestImageSize(input.channels));
  if (imgSize < input.minSize || imgSize > most) {
    const why = most < input.maxSize ? ` (an image's input tensor is at most ${MAX_BATCH_INPUT_BYTES / 1024 / 1024} MiB)` : '';
    throw new BrokerError('invalid_img_size', `img_size must be between ${input.minSize} and ${most} for model ${name}${why}, got ${imgSize}`, { details: { field: 'img_size' } });
  }
  return imgSize;
}

function fitsSize(imgSize: number | undefined, model: Pick<LoadedModel, 'manifest'>): boolean {
  try {
    checkSize(imgSize, model);
    return true;
  } catch {
    return false;
  }
}

/** The label of a run's top class: its first prediction's, or its largest raw score's (v2 asks for no predictions). */
function topLabel(r: RunResult, labels: readonly string[]): string | undefined {
  if (r.predictions[0] !== undefined) return r.predictions[0].label;
  if (r.scores === undefined || r.scores.length === 0) return undefined;
  let best = 0;
  for (let i = 1; i < r.scores.length; i++) if (r.scores[i]! > r.scores[best]!) best = i;
  return labels[best];
}

/** A failing B fails every shadow run: one log line a minute says so. */
const SHADOW_WARN_EVERY_MS = 60_000;

/** A tensor made for A's input is fit for B only when B takes the same input (size, layout, normalisation). */
function sameModel(pool: InferPool): boolean {
  return pool.models.A!.path === pool.models.B!.path;
}

function sameInput(pool: InferPool): boolean {
  return JSON.stringify(pool.models.A!.manifest.input) === JSON.stringify(pool.models.B!.manifest.input);
}

/** An ArrayBuffer holding exactly these bytes that can be transferred without detaching anything shared. */
function transferable(buf: Buffer): ArrayBuffer {
  // Small Buffers live in Node's shared allocation pool; transferring that would detach
  // other Buffers, so those are copied. Large ones own their ArrayBuffer and move as is.
  if (buf.byteOffset === 0 && buf.byteLength === buf.buffer.byteLength && buf.buffer instanceof ArrayBuffer) return buf.buffer;
  return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength) as ArrayBuffer;
}
