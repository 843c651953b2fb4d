// edge_broker.v1.InferenceService: Infer (unary) and InferStream (bidirectional), over
// the same inference service as HTTP /v1/infer (arms, batching, the pool's admission
// queue), with raw image bytes. InferStream answers in the order the images came, with
// at most WINDOW images in flight per stream: past it the stream stops reading (HTTP/2
// flow control then holds the client), so a fast sender cannot queue without bound.
import type { ServerDuplexStream, ServerUnaryCall, UntypedServiceImplementation, sendUnaryData } from '@grpc/grpc-js';
import { once } from 'node:events';
import { BrokerError, toBrokerError } from '../../errors.ts';
import { RequestAbort, type AbortLike } from '../../abort.ts';
import type { Logger } from '../../obs/logger.ts';
import { requestPriority } from '../../infer/admission.ts';
import { noteInference, type InferBackend } from '../../infer/routes.ts';
import type { InferReply } from '../../infer/service.ts';
import type { BrokerRequest } from '../reply.ts';
import type { ActiveCalls } from './active.ts';
import { brokerRequestOf, checkCall, logCall, serveUnary, type CallGuards } from './call.ts';
import { grpcCodeOf, grpcStatusOf } from './status.ts';
import { pastDeadline } from './metrics.ts';

/** Images of one InferStream being worked on at once (enough to fill batches, bounded per stream). */
export const WINDOW = 64;

export interface InferenceDeps extends CallGuards {
  readonly infer: InferBackend;
  readonly accessLog: Logger;
  readonly calls: ActiveCalls;
}

export interface InferRequestMsg {
  image?: Buffer;
  img_size?: number;
  top_k?: number;
  arm?: string;
}

type InferResponseMsg = InferReply & { trace_id: string };

function optionalInt(v: number | undefined, field: string, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  if (!Number.isInteger(v) || v < min || v > max) throw new BrokerError(field === 'img_size' ? 'invalid_img_size' : 'invalid_request', `${field} must be an integer between ${min} and ${max}`, { details: { field } });
  return v;
}

/** One image; `checked`: the call's credentials and rate, judged once for the call (a stream's images spend nothing more). */
async function inferOne(deps: InferenceDeps, req: BrokerRequest, m: InferRequestMsg, checked: Promise<void>, signal?: AbortLike): Promise<InferResponseMsg> {
  await checked;
  const image = m.image;
  if (image === undefined || image.length === 0) throw new BrokerError('invalid_image', 'image is required: the bytes of a PNG, JPEG or WebP file');
  const imgSize = optionalInt(m.img_size, 'img_size', 1, 100_000);
  const topK = optionalInt(m.top_k, 'top_k', 1, 1000);
  const arm = m.arm ?? '';
  if (arm !== '' && arm !== 'A' && arm !== 'B') throw new BrokerError('invalid_request', 'arm must be "A", "B" or empty', { details: { field: 'arm' } });
  return deps.infer.infer({ image, imgSize, topK, cookieArm: arm === '' ? undefined : arm, priority: requestPriority(req, deps.priorityCeiling), signal }).then((r) => {
    noteInference(req.facts, r);
    return { ...r, trace_id: req.id };
  });
}

export function inferenceService(deps: InferenceDeps): UntypedServiceImplementation {
  return {
    Infer: (call: ServerUnaryCall<InferRequestMsg, InferResponseMsg>, callback: sendUnaryData<InferResponseMsg>) => serveUnary(deps, call, callback, 'grpc.infer', (req, signal) => inferOne(deps, req, call.request, checkCall(deps, req), signal)),

    InferStream: (call: ServerDuplexStream<InferRequestMsg, unknown>) => {
      const req = brokerRequestOf(call, true, { recorder: deps.recorder, api: 'grpc.infer_stream' });
      let index = 0;
      let inFlight = 0;
      let paused = false;
      let over = false;
      // Results are written in arrival order: each waits for the one before it.
      let tail: Promise<void> = Promise.resolve();
      const end = (err: BrokerError | undefined): void => {
        if (over) return;
        over = true;
        untrack();
        if (call.cancelled) return logCall(deps.accessLog, req, undefined, true, deps.recorder, pastDeadline(call.getDeadline()));
        logCall(deps.accessLog, req, err, false, deps.recorder);
        if (err === undefined) call.end();
        else call.emit('error', grpcStatusOf(err, req.id));
      };
      // The stream cancelled (or the broker shutting down): its images still queued leave the queue.
      const signal = new RequestAbort();
      const untrack = deps.calls.track(() => {
        signal.abort();
        end(new BrokerError('shutting_down', 'the broker shut down before the stream was complete'));
      });
      // A write waiting for 'drain' when the call is cancelled must not wait forever.
      let onCancelled: () => void = () => undefined;
      const cancelled = new Promise<void>((r) => (onCancelled = r));
      call.on('cancelled', () => {
        signal.abort();
        onCancelled();
        end(undefined);
      });
      // The credentials and the rate limit are the stream's (its metadata), judged once: refused,
      // the whole stream fails (UNAUTHENTICATED, RESOURCE_EXHAUSTED), as an Infer call does, not
      // each image with an OK status at the end. Judged per image, a stream spent a rate token per
      // image (99 of 100 images rate_limited), and one let in failed image by image while its
      // session could not be checked.
      const checked = Promise.resolve().then(() => checkCall(deps, req));
      checked.catch((err: unknown) => end(toBrokerError(err)));
      call.on('data', (m: InferRequestMsg) => {
        if (over) return;
        const i = index++;
        inFlight++;
        if (inFlight >= WINDOW && !paused) {
          paused = true;
          call.pause();
        }
        let p: Promise<InferResponseMsg>;
        try {
          p = inferOne(deps, req, m, checked, signal);
        } catch (err) {
          p = Promise.reject(err);
        }
        const outcome = p.then(
          (result) => ({ index: i, result }),
          (err: unknown) => {
            const e = toBrokerError(err);
            return { index: i, error: { code: e.code, grpc_code: grpcCodeOf(e.code), message: e.message } };
          },
        );
        tail = tail.then(async () => {
          const out = await outcome;
          if (over) return;
          // Ended while waiting (shutdown emits 'error' on the call, which rejects once()): the
          // chain must not reject, nobody would handle it.
          if (!call.write(out)) await Promise.race([once(call, 'drain'), cancelled]).catch(() => undefined);
          inFlight--;
          if (paused && inFlight < WINDOW / 2) {
            paused = false;
            call.resume();
          }
        });
      });
      call.on('end', () => {
        void tail.then(() => end(undefined));
      });
    },
  };
}
