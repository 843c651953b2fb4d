// JSON logs (pino). Request lines carry the trace id; bodies and Authorization are never logged.
import { pino, type Logger } from 'pino';
import type { LogLevel } from '../config/env.ts';

export type { Logger };

export function createLogger(level: LogLevel, destination?: NodeJS.WritableStream): Logger {
  return pino(
    {
      level,
      base: { service: 'edge-broker' },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: ['authorization', 'headers.authorization', '*.authorization', 'image_b64'], remove: true },
    },
    destination ?? pino.destination({ sync: false }),
  );
}
