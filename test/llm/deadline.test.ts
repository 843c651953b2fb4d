// AttemptDeadline: the idle phase does not run while the broker itself stops reading (a slow
// client), and starts over when reading resumes. Small real waits; what is asserted is which
// phase ended the attempt, not when.
import t from 'tap';
import { AttemptDeadline } from '../../src/llm/exec/deadline.ts';
import { RequestAbort } from '../../src/abort.ts';
import { DEFAULT_TIMEOUTS } from '../../src/config/broker-config.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const timeouts = { ...DEFAULT_TIMEOUTS, id: 'd', connectTimeoutMs: 1000, firstTokenTimeoutMs: 5000, headersTimeoutMs: 5000, idleChunkTimeoutMs: 40, totalTimeoutMs: 60_000 };

/** The phase that ended the attempt, or 'still running' if none did long before the total limit (60 s). */
async function expiry(d: AttemptDeadline): Promise<string | null> {
  // The deadline's timers are unref'd (they never hold the process): this wait holds it.
  let timer: NodeJS.Timeout | undefined;
  const ended = await Promise.race([
    new Promise<boolean>((resolve) => (d.signal.aborted ? resolve(true) : d.signal.addEventListener('abort', () => resolve(true)))),
    new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), 5000))),
  ]);
  clearTimeout(timer);
  return ended ? d.expired : 'still running';
}

t.test('a pause longer than the idle limit is not a timeout; the upstream silent after resume is, as idle (not at the total limit)', async (t) => {
  const d = new AttemptDeadline(timeouts, true, new RequestAbort());
  t.teardown(() => d.done());
  d.chunk();
  d.pause();
  await sleep(120); // three idle limits while the client drains: the timer fires, and aims at the total
  t.equal(d.signal.aborted, false, 'paused: the silence is the client\'s');
  d.resume();
  t.equal(await expiry(d), 'idle', 'the idle phase that started at resume ended it');
});

t.test('no total limit: a pause arms nothing, resume arms the idle phase', async (t) => {
  const d = new AttemptDeadline({ ...timeouts, totalTimeoutMs: 0 }, true, new RequestAbort());
  t.teardown(() => d.done());
  d.chunk();
  d.pause();
  await sleep(120);
  t.equal(d.signal.aborted, false);
  d.resume();
  t.equal(await expiry(d), 'idle');
});

t.test('a whole reply with headersTimeoutMs 0 (a total of 0 makes it so): no first-phase limit, the idle phase after its headers', async (t) => {
  const d = new AttemptDeadline({ ...timeouts, headersTimeoutMs: 0, totalTimeoutMs: 0 }, false, new RequestAbort());
  t.teardown(() => d.done());
  await sleep(100);
  t.equal(d.signal.aborted, false, 'still waiting for the headers of a long generation');
  d.headers();
  t.equal(await expiry(d), 'idle');
});

t.test('headersTimeoutMs shorter than the first-token limit: an assembled reply (a non-streamed request streamed upstream) keeps it until its headers; a stream the client asked for does not', async (t) => {
  const short = { ...timeouts, headersTimeoutMs: 30, firstTokenTimeoutMs: 5000 };
  const assembled = new AttemptDeadline(short, true, new RequestAbort(), undefined, true);
  t.teardown(() => assembled.done());
  t.equal(await expiry(assembled), 'first_byte');
  t.match((assembled.signal.reason as Error).message, /sent no reply headers within headersTimeoutMs \(30 ms\)/);
  const streamed = new AttemptDeadline(short, true, new RequestAbort());
  t.teardown(() => streamed.done());
  await sleep(100);
  t.equal(streamed.signal.aborted, false, "a cold Ollama's stream sends its headers with its first line: only firstTokenTimeoutMs");
  // Headers in time: the first-token phase goes on.
  const got = new AttemptDeadline(short, true, new RequestAbort(), undefined, true);
  t.teardown(() => got.done());
  got.headers();
  await sleep(100);
  t.equal(got.signal.aborted, false, 'past headersTimeoutMs, but the headers came');
});
