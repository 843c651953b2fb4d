// Compiled stream chain vs one-Transform-per-stage pipeline, per route.
//
//   npm run bench:chain            (about 10-20 s)
//
// For each client × provider (chat), the same realistic upstream stream
// (CHUNKS token events, one event per network chunk, as Ollama and OpenAI
// flush them; some multi-byte text) goes through compile.ts and pipeline.ts
// with instrumentation and token counting on. Reported: nanoseconds per
// upstream chunk (median of ROUNDS after WARMUP), and pipeline / compiled.
// Writes bench/results/chain.json.

import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { compileChain, type ChainContext, type ChainSpec } from '../src/llm/chain/compile.ts';
import { runPipeline } from '../src/llm/chain/staged-baseline.ts';
import type { Api } from '../src/llm/translate/types.ts';

const CHUNKS = 10_000;
const WARMUP = 3;
const ROUNDS = 9;
const BUDGET_MS = 50_000;

const WORDS = ['The', ' sky', ' is', ' blue', ' because', ' of', ' Rayleigh', ' scattering', '.', ' Short', ' wavelengths', ' scatter', ' more', ',', ' héllo', ' 世界', ' 🎉', '\n\n', ' "quoted"'];

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** One Buffer per upstream event, as the upstream flushes them. */
function upstreamChunks(provider: Api): Buffer[] {
  const r = rng(42);
  const words = Array.from({ length: CHUNKS }, () => WORDS[Math.floor(r() * WORDS.length)]!);
  const out: Buffer[] = [];
  if (provider === 'openai') {
    const chunk = (delta: unknown, finish: string | null, usage: unknown = null): Buffer =>
      Buffer.from(
        'data: ' +
          JSON.stringify({
            id: 'chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG',
            object: 'chat.completion.chunk',
            created: 1741570283,
            model: 'gpt-4o-2024-08-06',
            service_tier: 'default',
            system_fingerprint: 'fp_eb9dce56a8',
            choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
            usage,
          }) +
          '\n\n',
      );
    out.push(chunk({ role: 'assistant', content: '', refusal: null }, null));
    for (const w of words) out.push(chunk({ content: w }, null));
    out.push(chunk({}, 'stop'));
    out.push(
      Buffer.from(
        'data: ' +
          JSON.stringify({
            id: 'chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG',
            object: 'chat.completion.chunk',
            created: 1741570283,
            model: 'gpt-4o-2024-08-06',
            choices: [],
            usage: { prompt_tokens: 31, completion_tokens: CHUNKS, total_tokens: CHUNKS + 31 },
          }) +
          '\n\n',
      ),
    );
    out.push(Buffer.from('data: [DONE]\n\n'));
  } else {
    let ns = 97_000_000;
    for (const w of words) {
      ns += 11_437_123;
      const at = new Date(1_723_003_053_000 + Math.floor(ns / 1e6)).toISOString().replace('Z', String(ns % 1e6).padStart(6, '0') + 'Z');
      out.push(Buffer.from(JSON.stringify({ model: 'llama3.2:3b', created_at: at, message: { role: 'assistant', content: w }, done: false }) + '\n'));
    }
    out.push(
      Buffer.from(
        JSON.stringify({
          model: 'llama3.2:3b',
          created_at: '2024-08-07T03:59:47.0365888Z',
          message: { role: 'assistant', content: '' },
          done_reason: 'stop',
          done: true,
          total_duration: 114353619900,
          load_duration: 63915300,
          prompt_eval_count: 31,
          prompt_eval_duration: 246847000,
          eval_count: CHUNKS,
          eval_duration: 114032296000,
        }) + '\n',
      ),
    );
  }
  return out;
}

function ctx(): ChainContext {
  return { model: 'my-model', id: 'bench', includeUsage: false, now: () => performance.now(), onToken: () => {} };
}

function runCompiled(spec: ChainSpec, chunks: Buffer[]): number {
  const s = compileChain(spec).open(ctx());
  let bytes = 0;
  for (const c of chunks) {
    const o = s.push(c);
    if (o !== null) bytes += o.length;
  }
  const e = s.end();
  if (e !== null) bytes += e.length;
  return bytes;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

interface Row {
  client: Api;
  provider: Api;
  kind: 'chat';
  upstreamBytesPerChunk: number;
  compiledNsPerChunk: number;
  pipelineNsPerChunk: number;
  ratio: number;
  compiledRounds: number[];
  pipelineRounds: number[];
}

async function main(): Promise<void> {
  const started = performance.now();
  const rows: Row[] = [];
  const routes: Array<[Api, Api]> = [
    ['openai', 'openai'],
    ['openai', 'ollama'],
    ['ollama', 'openai'],
    ['ollama', 'ollama'],
  ];
  for (const [client, provider] of routes) {
    const spec: ChainSpec = { client, provider, kind: 'chat', instrument: true, countTokens: true };
    const chunks = upstreamChunks(provider);
    const n = chunks.length;
    const upBytes = chunks.reduce((a, c) => a + c.length, 0);

    // Same bytes out of both, or the comparison means nothing.
    const compiledOut: Buffer[] = [];
    const s = compileChain(spec).open({ ...ctx(), now: () => 0 });
    for (const c of chunks) {
      const o = s.push(c);
      if (o !== null) compiledOut.push(Buffer.from(o));
    }
    const e = s.end();
    if (e !== null) compiledOut.push(Buffer.from(e));
    const piped = await runPipeline(spec, { ...ctx(), now: () => 0 }, chunks);
    if (!Buffer.concat(compiledOut).equals(piped.output)) throw new Error(`${client}<-${provider}: compiled and pipeline outputs differ`);

    const compiledRounds: number[] = [];
    const pipelineRounds: number[] = [];
    for (let i = 0; i < WARMUP + ROUNDS; i++) {
      if (performance.now() - started > BUDGET_MS) break;
      const t0 = process.hrtime.bigint();
      runCompiled(spec, chunks);
      const t1 = process.hrtime.bigint();
      await runPipeline(spec, ctx(), chunks);
      const t2 = process.hrtime.bigint();
      if (i >= WARMUP) {
        compiledRounds.push(Number(t1 - t0) / n);
        pipelineRounds.push(Number(t2 - t1) / n);
      }
    }
    const c = median(compiledRounds);
    const p = median(pipelineRounds);
    rows.push({
      client,
      provider,
      kind: 'chat',
      upstreamBytesPerChunk: Math.round(upBytes / n),
      compiledNsPerChunk: Math.round(c),
      pipelineNsPerChunk: Math.round(p),
      ratio: Math.round((p / c) * 10) / 10,
      compiledRounds: compiledRounds.map(Math.round),
      pipelineRounds: pipelineRounds.map(Math.round),
    });
  }

  const pad = (s: string | number, w: number): string => String(s).padStart(w);
  console.log(`stream chain, ${CHUNKS} token chunks per stream, instrument + countTokens on, median of ${ROUNDS} rounds (${process.version})`);
  console.log(`${'client <- provider'.padEnd(20)}${pad('bytes/chunk', 12)}${pad('compiled ns', 13)}${pad('pipeline ns', 13)}${pad('pipeline/compiled', 19)}`);
  for (const r of rows) {
    console.log(
      `${`${r.client} <- ${r.provider}`.padEnd(20)}${pad(r.upstreamBytesPerChunk, 12)}${pad(r.compiledNsPerChunk, 13)}${pad(r.pipelineNsPerChunk, 13)}${pad(r.ratio + 'x', 19)}`,
    );
  }

  const out = {
    bench: 'chain',
    date: new Date().toISOString(),
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
    cpu: cpus()[0]?.model ?? 'unknown',
    cpus: cpus().length,
    chunksPerStream: CHUNKS,
    warmupRounds: WARMUP,
    iterations: ROUNDS,
    spec: { kind: 'chat', instrument: true, countTokens: true },
    note: 'ns per upstream chunk (one token event per chunk), median over iterations; ratio = pipeline / compiled. Same-API routes forward upstream bytes (regex probes, no JSON.parse); cross-API routes parse and re-encode each event.',
    results: rows,
    elapsedMs: Math.round(performance.now() - started),
  };
  const file = join(dirname(fileURLToPath(import.meta.url)), 'results', 'chain.json');
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, JSON.stringify(out, null, 2) + '\n');
  console.log(`wrote ${file} in ${out.elapsedMs} ms`);
}

await main();
