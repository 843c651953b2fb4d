// Composition root for the process: config from env, start, graceful shutdown on signals.
import { ConfigError, loadConfig } from './config/env.ts';
import { startBroker, type Broker } from './app.ts';
import { BrokerConfigError } from './config/broker-config.ts';
import { BrokerError } from './errors.ts';
import { setFlagsFromString } from 'node:v8';

let config;
try {
  config = loadConfig();
} catch (err) {
  if (err instanceof ConfigError) {
    process.stderr.write(`edge-broker: invalid configuration: ${err.message}\n`);
    process.exit(2);
  }
  throw err;
}

// Signals are handled from the start: data-plane threads may answer before startBroker
// returns, and a signal then must still stop the broker gracefully. A repeat of the
// signal within a second is the same request (Ctrl-C reaches npm and the broker both);
// a later one cuts the grace period short: what is open ends now with its error, and the
// exit code is 1. (process.exit() under the data-plane threads' open uWS sockets aborted
// the process: exit 134, clients reset with no error event.)
let broker: Broker | undefined;
let stopRequestedAt: number | undefined;
let stopSignal: NodeJS.Signals | undefined;
// A signal while starting: the front stops accepting as soon as it is up (startBroker's stopSignal).
const starting = new AbortController();
// One close, whoever asks first (a signal, or an A that does not fit): two at once tore the
// data-plane threads' uWS sockets down twice and aborted the process (exit 134).
let closing = false;
let exitCode = 0;
/** A second signal came while starting: the close that follows the start ends what is open now. */
let hurryWhenStarted = false;
const closeOnce = (graceMs?: number): void => {
  if (closing) return;
  closing = true;
  // Exit once the last log lines are written: the destination is asynchronous.
  const exit = (code?: number) => () => broker!.logger.flush(() => process.exit(code ?? exitCode));
  broker!.close(graceMs).then(exit(), exit(1));
};
const stop = (): void => {
  if (broker === undefined) {
    starting.abort();
    return;
  }
  broker.logger.info({ signal: stopSignal }, 'shutting down');
  closeOnce();
};
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => {
    const now = Date.now();
    if (stopRequestedAt !== undefined) {
      if (now - stopRequestedAt <= 1000) return;
      exitCode = 1;
      // Whatever still holds the close: out, 15 s on (inference workers still loading their
      // models are let finish first: terminated mid-load, they abort the process).
      setTimeout(() => process.exit(1), 15_000).unref();
      // Still starting: its data-plane threads may serve already, and exiting under their uWS
      // sockets aborts the process (exit 134: seen when a loaded box took long to start). The
      // close that follows the start is cut short instead.
      if (broker === undefined) hurryWhenStarted = true;
      else broker.hurry();
      return;
    }
    stopRequestedAt = now;
    stopSignal = signal;
    stop();
  });
}

// SIGHUP (a proxy's reload signal; also what a closed terminal sends): the fleet file is read
// again and put in force, as POST /api/orchestrator/config/reload. Node's default ended the
// process at once, cutting every stream.
let reloadWhenStarted = false;
const reload = (): void => {
  // While starting, the file may have been read before it changed: read again once started.
  if (broker === undefined) return void (reloadWhenStarted = true);
  if (closing) return;
  try {
    const r = broker.reloadConfig();
    broker.logger.info({ audit: 'config', actor: 'signal:SIGHUP', part: '/reload', path: r.path, version: r.version }, 'orchestrator: config');
  } catch (err) {
    broker.logger.warn({ signal: 'SIGHUP', err: (err as Error).message }, 'SIGHUP: the fleet file was not reloaded; the running config stays');
  }
};
process.on('SIGHUP', reload);

// Worker threads (data planes, inference) start with V8's 1 MiB semi-space, which grows to
// 16 MiB under load and shrinks again at the first full GCs (about 100 s into a busy run),
// then regrows: a 40 MiB RSS swing the soak read as growth (operations.md §10). Read by
// every isolate created after this line; the main thread's own heap is sized already.
if (config.threadSemiSpaceMb > 0) setFlagsFromString(`--min-semi-space-size=${config.threadSemiSpaceMb}`);

try {
  broker = await startBroker(config, { stopSignal: starting.signal });
} catch (err) {
  if (err instanceof BrokerConfigError) {
    process.stderr.write(`edge-broker: invalid BROKER_CONFIG (${config.brokerConfigPath}): ${err.message}\n`);
    process.exit(2);
  }
  // A port in use, a model that does not load: one line that says what, not a stack trace.
  process.stderr.write(`edge-broker: cannot start: ${(err as Error).message}\n`);
  process.exit(1);
}
if (stopRequestedAt !== undefined) {
  stop();
  if (hurryWhenStarted) broker.hurry();
} else if (reloadWhenStarted) reload();
// The serving model (A) that does not fit its manifest cannot answer anything: say why and stop,
// rather than run a broker whose every inference fails. (B's problem is logged; A serves.)
broker.waitReady().catch((err: unknown) => {
  if (!(err instanceof BrokerError && err.code === 'model_unavailable')) return;
  process.stderr.write(`edge-broker: cannot start: ${err.message}\n`);
  // The data-plane threads hold uWS sockets: exiting under them aborts the process (exit 134),
  // so they are closed first, with no grace (nothing was served), unless a signal's close is
  // under way already.
  exitCode = 1;
  closeOnce(0);
});
