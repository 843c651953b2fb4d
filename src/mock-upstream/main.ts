// npm run mock-upstream -- --port 8081 --ttft-ms 200 --tps 50
// Starts the LLM upstream simulator and prints one JSON line: {"listening": <port>}.

import { USAGE, parseMockUpstreamArgs } from './args.ts';
import { createMockUpstream } from './server.ts';

let parsed: ReturnType<typeof parseMockUpstreamArgs>;
try {
  parsed = parseMockUpstreamArgs(process.argv.slice(2));
} catch (err) {
  process.stderr.write(`mock-upstream: ${(err as Error).message}\n${USAGE}\n`);
  process.exit(2);
}
if (parsed.help) {
  process.stdout.write(USAGE + '\n');
  process.exit(0);
}

try {
  const mock = await createMockUpstream(parsed.options);
  process.stdout.write(JSON.stringify({ listening: mock.port }) + '\n');
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    mock.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
} catch (err) {
  // The server's own errors name it already (they are thrown to library callers too).
  process.stderr.write(`${(err as Error).message.replace(/^(?!mock-upstream: )/, 'mock-upstream: ')}\n`);
  process.exit(1);
}
