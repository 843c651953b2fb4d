// undici times a connect with its own coarse timers (a 500 ms tick: a 200 ms connectTimeoutMs
// fired after 1 s, 2 s after 2.5 s). This connector is undici's own with that timer off and a
// Node timer in its place, so a deployment's connectTimeoutMs holds to the millisecond.
import type { Socket } from 'node:net';
import { buildConnector, errors } from 'undici';

export function connectorWithTimeout(timeoutMs: number): buildConnector.connector {
  const connect = buildConnector({ timeout: 0 });
  return (opts, callback) => {
    let settled = false;
    let socket: Socket | undefined;
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      socket?.destroy();
      callback(new errors.ConnectTimeoutError(`Connect Timeout Error (attempted address: ${opts.hostname}:${opts.port}, timeout: ${timeoutMs}ms)`), null);
    }, timeoutMs);
    // undici's connector returns the socket it is connecting (its types say void).
    socket = (connect as unknown as (o: typeof opts, cb: buildConnector.Callback) => Socket | undefined)(opts, (err, s) => {
      if (settled) {
        s?.destroy();
        return;
      }
      settled = true;
      clearTimeout(timer);
      if (err !== null) callback(err, null);
      else callback(null, s!);
    });
  };
}
