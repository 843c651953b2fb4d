// Command-line flags of `npm run mock-upstream`, kept apart from main.ts so tests can parse without starting a server.

import { parseArgs } from 'node:util';
import type { MockUpstreamOptions } from './server.ts';

export const USAGE = `usage: npm run mock-upstream -- [flags]
  --port N            port to listen on (default 0 = a free port)
  --host H            address to bind (default 127.0.0.1)
  --ttft-ms MS        delay before the first token (default 0)
  --tps N             tokens per second after the first, 0 = as fast as possible (default 0)
  --tokens N          output length in tokens (default 16)
  --fail MODE         fail every request: none | 500 | 429 | <4xx/5xx> | reset | stall | garbage
                      (one event that is not JSON, then the stream goes on), or answer as the
                      real servers do: context | ratelimit | overloaded | badrequest (default none)
  --fail-after N      tokens written before a reset, stall or garbage event (default 0)
  --tool-calls N      chat answers are N tool calls instead of text (default 0)
  --flavor F          whose error bodies the OpenAI routes send: openai | vllm (default openai)
  --embed-floats      /v1/embeddings answers floats even when base64 is asked for
  --models A,B        models to list; the first answers requests that name none (default mock-model)
  --loaded A          models /api/ps reports as loaded (default: all of --models)
  --keep-alive-ms MS  keep-alive timeout of idle connections (default 65000)
Per request, the headers x-mock-ttft-ms, x-mock-tps, x-mock-tokens, x-mock-fail,
x-mock-fail-after, x-mock-tool-calls and x-mock-flavor override the flags. Prints {"listening": <port>} once ready.`;

function num(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = v.trim() === '' ? NaN : Number(v);
  if (!Number.isFinite(n)) throw new RangeError(`--${name} must be a number, got ${JSON.stringify(v)}`);
  return n;
}

const OPTIONS = {
  port: { type: 'string' },
  host: { type: 'string' },
  'ttft-ms': { type: 'string' },
  tps: { type: 'string' },
  tokens: { type: 'string' },
  fail: { type: 'string' },
  'fail-after': { type: 'string' },
  'tool-calls': { type: 'string' },
  flavor: { type: 'string' },
  'embed-floats': { type: 'boolean' },
  models: { type: 'string' },
  loaded: { type: 'string' },
  'keep-alive-ms': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

const TAKES_VALUE = new Set(Object.entries(OPTIONS).filter(([, o]) => o.type === 'string').map(([name]) => `--${name}`));

/**
 * `--tokens -3` as `--tokens=-3`: parseArgs takes a value that starts with '-' only after '='
 * (else "argument is ambiguous", a usage error), but a negative number is a value, refused by
 * its range as `--tokens=-3` is (exit 1, the same message).
 */
function joinNegativeValues(argv: readonly string[]): string[] {
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const next = argv[i + 1];
    if (TAKES_VALUE.has(argv[i]!) && next !== undefined && /^-\.?\d/.test(next)) args.push(`${argv[i++]}=${next}`);
    else args.push(argv[i]!);
  }
  return args;
}

/** Parses the flags; throws on an unknown flag or a value that is not a number. `help` is true for --help. */
export function parseMockUpstreamArgs(argv: readonly string[]): { help: boolean; options: MockUpstreamOptions } {
  const { values } = parseArgs({ args: joinNegativeValues(argv), strict: true, allowPositionals: false, options: OPTIONS });
  const options: MockUpstreamOptions = {};
  const set = <K extends keyof MockUpstreamOptions>(key: K, v: MockUpstreamOptions[K] | undefined): void => {
    if (v !== undefined) options[key] = v;
  };
  set('port', num('port', values.port));
  set('host', values.host);
  set('ttftMs', num('ttft-ms', values['ttft-ms']));
  set('tps', num('tps', values.tps));
  set('tokens', num('tokens', values.tokens));
  set('fail', values.fail);
  set('failAfter', num('fail-after', values['fail-after']));
  set('toolCalls', num('tool-calls', values['tool-calls']));
  set('flavor', values.flavor as MockUpstreamOptions['flavor']);
  if (values['embed-floats'] === true) options.embedFloats = true;
  set('models', values.models?.split(',').map((m) => m.trim()).filter((m) => m.length > 0));
  set('loaded', values.loaded?.split(',').map((m) => m.trim()).filter((m) => m.length > 0));
  set('keepAliveTimeoutMs', num('keep-alive-ms', values['keep-alive-ms']));
  return { help: values.help === true, options };
}
