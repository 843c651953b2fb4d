// edge_broker.v1.ModelService: the LLM model groups and the image models.
import type { ServerUnaryCall, UntypedServiceImplementation, sendUnaryData } from '@grpc/grpc-js';
import { toBrokerError } from '../../errors.ts';
import type { FleetSource } from '../../fleet/fleet.ts';
import type { Logger } from '../../obs/logger.ts';
import type { InferService } from '../../infer/service.ts';
import { brokerRequestOf, logCall, sendTraceId } from './call.ts';
import { grpcStatusOf } from './status.ts';

interface ModelMsg {
  id: string;
  kind: string;
  version: string;
  arm: string;
}

export interface ModelDeps {
  readonly source: FleetSource;
  readonly infer: InferService | undefined;
  readonly accessLog: Logger;
}

export function modelService(deps: ModelDeps): UntypedServiceImplementation {
  return {
    ListModels: (call: ServerUnaryCall<unknown, { models: ModelMsg[] }>, callback: sendUnaryData<{ models: ModelMsg[] }>) => {
      const req = brokerRequestOf(call, false);
      Promise.resolve(deps.source.current()).then(
        (fleet) => {
          const models: ModelMsg[] = [...new Set(fleet?.groups.values() ?? [])].map((g) => ({ id: g.name, kind: 'llm', version: '', arm: '' }));
          if (deps.infer !== undefined) {
            const { A, B } = deps.infer.models;
            models.push({ id: A.manifest.name, kind: 'image_classifier', version: A.manifest.version, arm: 'A' });
            models.push({ id: B.manifest.name, kind: 'image_classifier', version: B.manifest.version, arm: 'B' });
          }
          logCall(deps.accessLog, req, undefined);
          sendTraceId(call, req.id);
          callback(null, { models });
        },
        (err: unknown) => {
          const e = toBrokerError(err);
          logCall(deps.accessLog, req, e);
          sendTraceId(call, req.id);
          callback(grpcStatusOf(e, req.id));
        },
      );
    },
  };
}
