// The log destination of every thread: lines gathered over one event-loop turn, then
// written to the file descriptor (stdout) by this thread, with one write per turn.
//
// Why not pino's asynchronous destination, or the control plane writing for the
// data-plane threads: each line then woke another thread (a libuv pool thread for the
// write, the control plane for the message), and at LOG_LEVEL=info the access log cost
// 211 µs of CPU per request across threads, against about 40 µs written here (docs/benchmarks.md,
// session 17). A full pipe blocks the writer, as pino's default destination does: the log
// reader's back-pressure, not memory that grows.
import { writeSync } from 'node:fs';

/** The most a pipe takes in one atomic write: lines of different threads never interleave below it. */
export const PIPE_BUF = 4096;

export interface LogStream {
  write(line: string): boolean;
  /** Writes what is gathered now; `cb` once it is written (pino's logger.flush). */
  flush(cb?: (err?: Error) => void): void;
}

export interface FdLogOptions {
  readonly fd: number;
  /** Where the text goes that a descriptor failing for good (EPIPE, EBADF) did not take. */
  readonly spill: (text: string) => void;
  /** The write itself (tests); fs.writeSync by default. */
  readonly writeSync?: (fd: number, buf: Buffer, offset: number, length: number) => number;
}

export function fdLogStream(opts: FdLogOptions): LogStream {
  const write = opts.writeSync ?? writeSync;
  return turnLogStream((text) => writeLines(Buffer.from(text), opts.fd, write, opts.spill));
}

/** Lines gathered over one event-loop turn, then handed to `sink` at once (one write, one message). */
export function turnLogStream(sink: (text: string) => void): LogStream {
  let buffered = '';
  let scheduled = false;
  const flush = (cb?: (err?: Error) => void): void => {
    scheduled = false;
    if (buffered !== '') {
      const text = buffered;
      buffered = '';
      sink(text);
    }
    cb?.();
  };
  const flushTurn = (): void => flush();
  return {
    write(line: string): boolean {
      buffered += line;
      if (!scheduled) {
        scheduled = true;
        setImmediate(flushTurn);
      }
      return true;
    },
    flush,
  };
}

/** What a write waits between tries while a non-blocking stdout is full (EAGAIN). */
const FULL_WAIT_MS = 1;
const sleeper = new Int32Array(new SharedArrayBuffer(4));

/**
 * Writes `buf` in pieces of at most PIPE_BUF bytes that end at a line's end (a longer
 * line alone), so that a pipe shared with other threads gets whole lines, in order. A
 * full non-blocking stdout (EAGAIN; `process.stdout` or tsx make fd 1 non-blocking for
 * the whole process) is waited out, as pino's synchronous destination does, and a partial
 * write is finished before anything else: never a line cut in two. Only a descriptor that
 * fails for good (EPIPE, EBADF) hands what is left to `spill`.
 */
export function writeLines(buf: Buffer, fd: number, write: NonNullable<FdLogOptions['writeSync']>, spill: (text: string) => void): void {
  let off = 0;
  while (off < buf.length) {
    let end = Math.min(off + PIPE_BUF, buf.length);
    if (end < buf.length) {
      const nl = buf.lastIndexOf(0x0a, end - 1);
      if (nl >= off) end = nl + 1;
      else {
        const next = buf.indexOf(0x0a, end);
        end = next < 0 ? buf.length : next + 1;
      }
    }
    while (off < end) {
      let n: number;
      try {
        n = write(fd, buf, off, end - off);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') {
          spill(buf.toString('utf8', off));
          return;
        }
        n = 0;
      }
      if (n <= 0) Atomics.wait(sleeper, 0, 0, FULL_WAIT_MS);
      else off += n;
    }
  }
}
