// Composition root for the process: config from env, start, graceful shutdown on signals.
import { ConfigError, loadConfig } from './config/env.ts';
import { startBroker } from './app.ts';
import { BrokerConfigError } from './config/broker-config.ts';

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

let broker;
try {
  broker = await startBroker(config);
} catch (err) {
  if (err instanceof BrokerConfigError) {
    process.stderr.write(`edge-broker: invalid BROKER_CONFIG (${config.brokerConfigPath}): ${err.message}\n`);
    process.exit(2);
  }
  throw err;
}
let stopping = false;
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => {
    if (stopping) process.exit(1);
    stopping = true;
    broker.logger.info({ signal }, 'shutting down');
    broker.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  });
}
