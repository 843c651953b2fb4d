// The .proto files of the gRPC front, loaded once per process: the broker's services
// (proto/edge_broker/v1) and the standard health service (proto/grpc/health/v1). The
// same package definition feeds the server and reflection, so what grpcurl discovers
// is exactly what is served.
import { fileURLToPath } from 'node:url';
import * as protoLoader from '@grpc/proto-loader';

/** proto/ at the repository root: the same relative place from src/front/grpc and dist/front/grpc. */
export const PROTO_ROOT = fileURLToPath(new URL('../../../proto/', import.meta.url));

export const PROTO_FILES = ['edge_broker/v1/inference.proto', 'edge_broker/v1/chat.proto', 'edge_broker/v1/models.proto', 'grpc/health/v1/health.proto'] as const;

/**
 * keepCase: field names as in the .proto (snake_case, like the HTTP JSON); no defaults
 * filled in, so that an unset `optional` field reads undefined; bytes as Buffer; 64-bit
 * integers as numbers (seed, index); enums as numbers.
 */
export const LOADER_OPTIONS: protoLoader.Options = { keepCase: true, longs: Number, enums: Number, defaults: false, oneofs: true, includeDirs: [PROTO_ROOT] };

let loaded: protoLoader.PackageDefinition | undefined;

export function packageDefinition(): protoLoader.PackageDefinition {
  loaded ??= protoLoader.loadSync([...PROTO_FILES], LOADER_OPTIONS);
  return loaded;
}

export const SERVICES = {
  inference: 'edge_broker.v1.InferenceService',
  chat: 'edge_broker.v1.ChatService',
  models: 'edge_broker.v1.ModelService',
  health: 'grpc.health.v1.Health',
} as const;
