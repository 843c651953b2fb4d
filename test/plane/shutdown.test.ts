// Shutdown is bounded by its grace period whatever the upstreams do: a reply whose
// upstream has not even sent its headers is aborted at the deadline and answered
// 503 shutting_down, in both thread modes.
import t from 'tap';
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:net';
import { request } from 'undici';
import { stringify } from 'yaml';
import { createMockUpstream } from '../../src/mock-upstream/server.ts';
import { startTestBroker } from '../helpers/broker.ts';

for (const threads of ['0', '2']) {
  t.test(`FRONT_THREADS=${threads}: a slow-headers upstream does not hold shutdown past the grace period`, async (t) => {
    // Non-streamed: the mock sends its headers only with the whole reply, a minute from now.
    const slow = await createMockUpstream({ ttftMs: 60_000, tokens: 4 });
    t.teardown(() => slow.close());
    const dir = mkdtempSync(join(tmpdir(), 'eb-stop-'));
    writeFileSync(join(dir, 'broker.yaml'), stringify({ modelGroups: { g: { deployments: [{ id: 'slow', provider: 'openai', url: slow.url, model: 'm' }] } } }));
    const tb = await startTestBroker({ BROKER_CONFIG: join(dir, 'broker.yaml'), FRONT_THREADS: threads, INFER_ENABLED: 'false' });
    const pending = request(`${tb.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'g', messages: [{ role: 'user', content: 'hi' }] }),
    }).then(async (r) => ({ status: r.statusCode, body: await r.body.json() as any }));
    for (let i = 0; i < 200 && slow.stats.open === 0; i++) await new Promise((r) => setTimeout(r, 10));
    t.equal(slow.stats.open, 1, 'the request waits on the upstream');
    const started = Date.now();
    await tb.broker.close(300);
    const took = Date.now() - started;
    const res = await pending;
    t.equal(res.status, 503);
    t.equal(res.body.error.code, 'shutting_down');
    // Not a timing assertion on the broker's speed: the bound is the grace period plus the
    // 1 s given to cut requests, against the upstream's 60 s.
    t.ok(took < 30_000, `close() returned without waiting for the upstream (${took} ms)`);
    for (let i = 0; i < 200 && slow.stats.open > 0; i++) await new Promise((r) => setTimeout(r, 10));
    t.equal(slow.stats.open, 0, 'the upstream request was aborted');
    // Counted as the shutdown's cut (llm_requests_total reason shutting_down, tracking's outcome), not the upstream's failure.
    t.ok(tb.logs.some((l) => l['msg'] === 'request cut by the shutdown after its grace period' && l['deployment'] === 'slow'), 'the proxy recorded the shutdown, not an upstream error');
  });
}

for (const threads of ['0', '2']) {
  t.test(`FRONT_THREADS=${threads}: once shutdown starts, readiness says 503 on a kept-alive connection too`, async (t) => {
    // A long stream keeps the broker in its grace period while the probe asks.
    const slow = await createMockUpstream({ tokens: 1000, tps: 5 });
    t.teardown(() => slow.close());
    const dir = mkdtempSync(join(tmpdir(), 'eb-stop-'));
    writeFileSync(join(dir, 'broker.yaml'), stringify({ modelGroups: { g: { deployments: [{ id: 'slow', provider: 'openai', url: slow.url, model: 'm' }] } } }));
    const tb = await startTestBroker({ BROKER_CONFIG: join(dir, 'broker.yaml'), FRONT_THREADS: threads, INFER_ENABLED: 'false' });
    const port = Number(new URL(tb.url).port);
    const stream = request(`${tb.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'g', stream: true, messages: [{ role: 'user', content: 'hi' }] }),
    }).then((r) => r.body.text());
    for (let i = 0; i < 200 && slow.stats.open === 0; i++) await new Promise((r) => setTimeout(r, 10));
    const sock = connect(port, '127.0.0.1');
    let got = '';
    let sockClosed = false;
    sock.on('data', (d) => (got += d));
    sock.on('close', () => (sockClosed = true));
    // The broker closes the connection after its Connection: close reply; a probe written
    // just then meets a reset, which is not what this test is about.
    sock.on('error', () => undefined);
    const reply = async (): Promise<string> => {
      for (let i = 0; i < 500 && !sockClosed && !/\r\n\r\n\{[^]*\}$/.test(got); i++) await new Promise((r) => setTimeout(r, 10));
      const out = got;
      got = '';
      return out;
    };
    sock.write('GET /ready HTTP/1.1\r\nHost: x\r\n\r\n');
    t.match(await reply(), /^HTTP\/1\.1 200/, 'ready before');
    const closed = tb.broker.close(2000);
    // Ask on the kept-alive connection until its thread knows it is closing (its replies then
    // carry Connection: close, and it closes the connection): that reply must say not ready.
    // (A probe the thread forwarded before it knew may still be answered by the control plane.)
    let after = '';
    for (let i = 0; i < 200 && !sockClosed; i++) {
      sock.write('GET /ready HTTP/1.1\r\nHost: x\r\n\r\n');
      const r = await reply();
      if (r !== '') after = r;
      if (/connection: close/i.test(after)) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    if (threads === '0' || !sockClosed || /connection: close/i.test(after)) {
      t.match(after, /connection: close/i);
      t.match(after, /^HTTP\/1\.1 503/, 'not ready once shutting down');
      t.match(after, /"shutting_down":true/);
    } else {
      // A data-plane thread that stops also closes its idle kept-alive connections: a probe
      // that reaches the connection after that gets no answer at all, which is not ready either.
      t.pass('the connection was closed before the probe was read: not ready');
    }
    sock.destroy();
    await closed;
    t.match(await stream, /shutting_down/);
  });
}

// Images still queued at the end of the grace period answer 503 shutting_down while their
// connections are open; before, the pool went on with its whole queue after the fronts
// had closed: every one of those clients saw its connection cut, and close() overran.
for (const threads of ['0', '2']) {
  t.test(`FRONT_THREADS=${threads}: inference requests still queued at the deadline get 503 shutting_down, none is cut`, async (t) => {
    const sharp = (await import('sharp')).default;
    // Big images that are small to send (a gradient PNG): cheap for the fronts, slow to
    // decode on one worker holding one batch, so that a queue builds.
    const big = (await sharp({ create: { width: 3000, height: 3000, channels: 3, background: { r: 40, g: 90, b: 160 } } }).png().toBuffer()).toString('base64');
    // vA in batches of 2: the batch running at the deadline ends well within the second the fronts give it.
    const dir = mkdtempSync(join(tmpdir(), 'eb-stop-infer-'));
    copyFileSync('models/vA.onnx', join(dir, 'vA.onnx'));
    const manifest = JSON.parse(readFileSync('models/vA.json', 'utf8'));
    manifest.batching = { max_batch_size: 2 };
    writeFileSync(join(dir, 'vA.json'), JSON.stringify(manifest));
    const tb = await startTestBroker({ FRONT_THREADS: threads, INFER_THREADS: '1', INFER_TASKS_PER_WORKER: '1', INFER_MAX_QUEUE: '1000', MODEL_VA_PATH: join(dir, 'vA.onnx'), MODEL_VB_PATH: join(dir, 'vA.onnx') });
    const replies = Array.from({ length: 60 }, () =>
      request(`${tb.url}/v1/infer`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ image_b64: big }) }).then(
        async (r) => ({ status: r.statusCode, code: ((await r.body.json()) as any).error?.code as string | undefined }),
        (err: Error) => ({ status: 0, code: `cut: ${err.message}` }),
      ),
    );
    for (let i = 0; i < 500 && tb.broker.infer!.currentPool.queueSize < 20; i++) await new Promise((r) => setTimeout(r, 10));
    t.ok(tb.broker.infer!.currentPool.queueSize >= 20, `a queue to cut short (${tb.broker.infer!.currentPool.queueSize})`);
    await tb.broker.close(200);
    const out = await Promise.all(replies);
    const cut = out.filter((r) => r.status === 0);
    t.same(cut, [], 'no connection cut');
    t.ok(out.some((r) => r.status === 503 && r.code === 'shutting_down'), `the queued ones: 503 shutting_down (${JSON.stringify(out.map((r) => r.status))})`);
    t.same(out.filter((r) => !(r.status === 200 || (r.status === 503 && r.code === 'shutting_down'))), [], 'every request: its answer or shutting_down');
  });
}

for (const threads of ['0', '2']) {
  t.test(`FRONT_THREADS=${threads}: a stop asked while starting stops the front accepting as soon as it is up, before startBroker returns`, async (t) => {
    const { loadConfig } = await import('../../src/config/env.ts');
    const { startBroker } = await import('../../src/app.ts');
    const { Writable } = await import('node:stream');
    const config = loadConfig({ PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'warn', GRPC_PORT: '0', FRONT_THREADS: threads, INFER_ENABLED: 'false', FLEET_HEALTH_CHECKS: 'false' });
    // SIGTERM came while the broker was starting (main.ts aborts this): with threads, they
    // answered /ready 200 for the second the rest of start-up took.
    const stopping = new AbortController();
    stopping.abort();
    const broker = await startBroker(config, { stopSignal: stopping.signal, logDestination: new Writable({ write: (_c, _e, cb) => cb() }) });
    t.teardown(() => broker.close(0));
    let outcome = '';
    for (let i = 0; i < 50; i++) {
      outcome = await fetch(`http://127.0.0.1:${broker.port}/ready`).then((r) => String(r.status), () => 'refused');
      if (outcome !== '200') break;
      await new Promise((r) => setTimeout(r, 10));
    }
    t.ok(outcome === 'refused' || outcome === '503', `a new connection is not served as ready (${outcome})`);
  });
}

/** A chunked body decoded, or null when its framing is broken. */
function dechunk(body: string): string | null {
  let out = '';
  let at = 0;
  for (;;) {
    const eol = body.indexOf('\r\n', at);
    if (eol < 0) return null;
    const size = Number.parseInt(body.slice(at, eol), 16);
    if (!Number.isInteger(size) || !/^[0-9a-f]+$/i.test(body.slice(at, eol))) return null;
    if (size === 0) return body.slice(eol + 2) === '\r\n' ? out : null;
    out += body.slice(eol + 2, eol + 2 + size);
    if (body.slice(eol + 2 + size, eol + 4 + size) !== '\r\n') return null;
    at = eol + 4 + size;
  }
}

// Replies to requests already in flight when shutdown began went out without Connection: close;
// their clients wrote the next request on the connection closeAll() then closed (ECONNRESET, a
// POST whose fate is unknown). And a stream begun during the grace period ended with uWS's own
// "Connection: close" written into its chunked body.
for (const threads of ['0', '2']) {
  t.test(`FRONT_THREADS=${threads}: once shutdown starts, every reply says connection: close (once), a stream's body stays whole`, async (t) => {
    const slow = await createMockUpstream({ ttftMs: 700, tokens: 3 });
    t.teardown(() => slow.close());
    const dir = mkdtempSync(join(tmpdir(), 'eb-stop-'));
    writeFileSync(join(dir, 'broker.yaml'), stringify({ modelGroups: { g: { deployments: [{ id: 'slow', provider: 'openai', url: slow.url, model: 'm' }] } } }));
    const tb = await startTestBroker({ BROKER_CONFIG: join(dir, 'broker.yaml'), FRONT_THREADS: threads, INFER_ENABLED: 'false' });
    const port = Number(new URL(tb.url).port);
    const raw = (): { sock: ReturnType<typeof connect>; text: () => string; closed: Promise<void> } => {
      const sock = connect(port, '127.0.0.1');
      let got = '';
      sock.on('data', (d) => (got += d));
      sock.on('error', () => undefined);
      return { sock, text: () => got, closed: new Promise((r) => sock.on('close', () => r())) };
    };
    const post = (stream: boolean): string => {
      const body = JSON.stringify({ model: 'g', stream, messages: [{ role: 'user', content: 'hi' }] });
      return `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
    };
    // Both connections kept alive and used once before the shutdown.
    const a = raw();
    const b = raw();
    for (const c of [a, b]) c.sock.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    for (let i = 0; i < 300 && !(a.text().includes('\r\n\r\n') && b.text().includes('\r\n\r\n')); i++) await new Promise((r) => setTimeout(r, 10));
    const before = [a.text().length, b.text().length];
    a.sock.write(post(false));
    for (let i = 0; i < 200 && slow.stats.open === 0; i++) await new Promise((r) => setTimeout(r, 10));
    const closing = tb.broker.close(5000);
    await new Promise((r) => setTimeout(r, 100));
    b.sock.write(post(true));
    await Promise.all([a.closed, b.closed]);
    await closing;
    const replyA = a.text().slice(before[0]);
    t.match(replyA, /^HTTP\/1\.1 200/, 'the request in flight at the shutdown is answered');
    t.equal(replyA.match(/^connection: close\r$/gim)?.length, 1, `its reply says connection: close, once:\n${replyA.split('\r\n\r\n')[0]}`);
    const replyB = b.text().slice(before[1]);
    // A data-plane thread with nothing in flight stops at once and closes its idle connections:
    // b's may be on the other thread (as any idle kept-alive connection then: the preStop sleep's job).
    if (threads === '2' && replyB === '') return void t.pass('b was idle on a thread that had stopped: closed before its request');
    const [head, ...rest] = replyB.split('\r\n\r\n');
    t.match(head, /^HTTP\/1\.1 200/, 'a stream begun during the grace period is served');
    t.equal(head!.match(/^connection: close\r?$/gim)?.length, 1, `its headers say connection: close, once:\n${head}`);
    const body = dechunk(rest.join('\r\n\r\n'));
    t.not(body, null, `its chunked body is well formed: ${JSON.stringify(rest.join('\r\n\r\n').slice(-200))}`);
    t.match(body ?? '', /data: \[DONE\]/, 'and complete');
  });
}

// LLM requests still waiting for a deployment when the broker stops: answered at once, 503
// shutting_down with Retry-After, for the client (or the load balancer) to retry on another
// replica; before, they waited out the whole grace period and were then cut as if begun.
for (const threads of ['0', '2']) {
  t.test(`FRONT_THREADS=${threads}: LLM requests still queued at shutdown answer 503 shutting_down with Retry-After at once; the running stream finishes`, async (t) => {
    const slow = await createMockUpstream({ tokens: 40, tps: 20 });
    t.teardown(() => slow.close());
    const dir = mkdtempSync(join(tmpdir(), 'eb-stop-'));
    writeFileSync(join(dir, 'broker.yaml'), stringify({ scheduler: { maxWaitMs: 60_000 }, modelGroups: { g: { deployments: [{ id: 'one', provider: 'openai', url: slow.url, model: 'm', concurrencyLimit: 1 }] } } }));
    const tb = await startTestBroker({ BROKER_CONFIG: join(dir, 'broker.yaml'), FRONT_THREADS: threads, INFER_ENABLED: 'false' });
    const events: string[] = [];
    const chat = (stream: boolean, name: string) =>
      request(`${tb.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'g', stream, messages: [{ role: 'user', content: name }] }),
      }).then(async (r) => {
        const text = await r.body.text();
        events.push(name);
        return { status: r.statusCode, retryAfter: r.headers['retry-after'], text };
      });
    const running = chat(true, 'running');
    for (let i = 0; i < 200 && slow.stats.open === 0; i++) await new Promise((r) => setTimeout(r, 10));
    t.equal(slow.stats.open, 1, 'one stream holds the only place');
    const queued = [chat(false, 'q1'), chat(true, 'q2'), chat(false, 'q3')];
    let depth = 0;
    for (let i = 0; i < 300 && depth < 3; i++) {
      depth = Number(/^broker_queue_depth(?:\{[^}]*\})? (\d+)/m.exec(await (await fetch(`${tb.url}/metrics`)).text())?.[1] ?? 0);
      if (depth < 3) await new Promise((r) => setTimeout(r, 10));
    }
    t.equal(depth, 3, 'three wait for it');
    const closing = tb.broker.close(30_000);
    const refused = await Promise.all(queued);
    t.same(events.slice(0, 3).sort(), ['q1', 'q2', 'q3'], 'the queued ones are answered before the running stream ends');
    for (const r of refused) {
      t.equal(r.status, 503);
      t.equal(r.retryAfter, '1');
      t.match(JSON.parse(r.text).error, { code: 'shutting_down', message: /had not started/ });
    }
    const done = await running;
    t.equal(done.status, 200);
    t.match(done.text, /data: \[DONE\]/, 'the running stream completed within the grace period');
    await closing;
    t.equal(slow.stats.requests['/v1/chat/completions'], 1, 'the queued requests never reached the upstream');
  });
}
