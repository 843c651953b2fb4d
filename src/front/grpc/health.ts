// grpc.health.v1.Health: Check and Watch, per service. "" is the broker as a whole
// (SERVING once the inference models are loaded, as /ready); each broker service has
// its own status. Shutdown turns every one NOT_SERVING and ends the Watch streams, so
// that a load balancer stops sending before the server stops accepting.
import { status as Status, type ServerUnaryCall, type ServerWritableStream, type UntypedServiceImplementation, type sendUnaryData } from '@grpc/grpc-js';

export const SERVING = 1;
export const NOT_SERVING = 2;
export const SERVICE_UNKNOWN = 3;

interface CheckRequest {
  service?: string;
}
interface CheckResponse {
  status: number;
}

export class HealthStatus {
  private readonly statuses = new Map<string, number>();
  private readonly watchers = new Set<{ service: string; call: ServerWritableStream<CheckRequest, CheckResponse>; last: number }>();
  private stopping = false;

  /** `maxWatchers`: Watch streams open at once; a Watch past it is RESOURCE_EXHAUSTED (each holds a stream and its memory for as long as its client likes). */
  constructor(private readonly maxWatchers = 1000) {}

  /** Sets a service's status ("" for the broker); watchers of it hear the change. Ignored once shutting down. */
  set(service: string, status: number): void {
    if (this.stopping) return;
    this.put(service, status);
  }

  get(service: string): number | undefined {
    return this.statuses.get(service);
  }

  /** Every service NOT_SERVING for good; Watch streams get it, then end (UNAVAILABLE). */
  shutdown(): void {
    this.stopping = true;
    for (const s of this.statuses.keys()) this.put(s, NOT_SERVING);
    for (const w of this.watchers) w.call.emit('error', { code: Status.UNAVAILABLE, details: 'the broker is shutting down' });
    this.watchers.clear();
  }

  private put(service: string, status: number): void {
    this.statuses.set(service, status);
    for (const w of this.watchers) {
      if (w.service !== service || w.last === status) continue;
      w.last = status;
      w.call.write({ status });
    }
  }

  implementation(): UntypedServiceImplementation {
    return {
      Check: (call: ServerUnaryCall<CheckRequest, CheckResponse>, callback: sendUnaryData<CheckResponse>) => {
        const s = this.statuses.get(call.request.service ?? '');
        if (s === undefined) return callback({ code: Status.NOT_FOUND, details: `unknown service ${call.request.service}` });
        callback(null, { status: s });
      },
      Watch: (call: ServerWritableStream<CheckRequest, CheckResponse>) => {
        const service = call.request.service ?? '';
        if (this.watchers.size >= this.maxWatchers) {
          call.emit('error', { code: Status.RESOURCE_EXHAUSTED, details: `${this.maxWatchers} Watch streams are open already (GRPC_MAX_HEALTH_WATCHERS): use Check, or retry later` });
          return;
        }
        const last = this.statuses.get(service) ?? SERVICE_UNKNOWN;
        call.write({ status: last });
        if (this.stopping) {
          call.emit('error', { code: Status.UNAVAILABLE, details: 'the broker is shutting down' });
          return;
        }
        const w = { service, call, last };
        this.watchers.add(w);
        call.on('cancelled', () => this.watchers.delete(w));
      },
    };
  }
}
