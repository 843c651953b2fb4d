// The .proto files of the gRPC front, loaded once per process: the broker's services
// (proto/edge_broker/v1) and the standard health service (proto/grpc/health/v1). The
// same package definition feeds the server and reflection, so what grpcurl discovers
// is exactly what is served.
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as protoLoader from '@grpc/proto-loader';
import descriptor from 'protobufjs/ext/descriptor/index.js';

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

/**
 * What reflection serves: the package definition with two things protoc's descriptors have and
 * proto-loader's lack. An `optional` field says so (`proto3_optional`): protobufjs keeps only
 * its synthetic oneof `_<field>`, which tools then show as a real oneof. And the reflection
 * services themselves are listed (`grpcurl list` shows them for a server in Go or Java).
 */
export function reflectedDefinition(defs: protoLoader.PackageDefinition): protoLoader.PackageDefinition {
  const require = createRequire(import.meta.url);
  const root = join(dirname(require.resolve('@grpc/reflection')), '..', 'proto');
  const reflection = protoLoader.loadSync(['grpc/reflection/v1/reflection.proto', 'grpc/reflection/v1alpha/reflection.proto'], { ...LOADER_OPTIONS, includeDirs: [root] });
  const fixed = new Map<Buffer, Buffer>();
  const out: protoLoader.PackageDefinition = {};
  for (const [name, def] of Object.entries({ ...defs, ...reflection })) {
    const files = (def as { fileDescriptorProtos?: unknown }).fileDescriptorProtos;
    if (!Array.isArray(files)) {
      out[name] = def;
      continue;
    }
    const bins = (files as Buffer[]).map((b) => {
      let f = fixed.get(b);
      if (f === undefined) fixed.set(b, (f = withProto3Optional(b)));
      return f;
    });
    out[name] = { ...def, fileDescriptorProtos: bins } as protoLoader.PackageDefinition[string];
  }
  return out;
}

interface FieldDescriptor {
  name?: string;
  oneofIndex?: number;
  proto3Optional?: boolean;
}
interface MessageDescriptor {
  field?: FieldDescriptor[];
  oneofDecl?: { name?: string }[];
  nestedType?: MessageDescriptor[];
}

/** A file descriptor whose fields alone in a oneof named `_<field>` are marked proto3_optional, as protoc marks them. */
function withProto3Optional(bin: Buffer): Buffer {
  const FileDescriptorProto = descriptor.FileDescriptorProto;
  const file = FileDescriptorProto.decode(bin) as unknown as { messageType?: MessageDescriptor[] };
  let changed = false;
  const visit = (m: MessageDescriptor): void => {
    const fields = m.field ?? [];
    for (const f of fields) {
      // Decoded messages carry defaults on their prototype: an unset oneofIndex reads 0.
      if (!Object.hasOwn(f, 'oneofIndex')) continue;
      const o = f.oneofIndex!;
      if (m.oneofDecl?.[o]?.name !== `_${f.name}` || fields.filter((x) => Object.hasOwn(x, 'oneofIndex') && x.oneofIndex === o).length !== 1) continue;
      f.proto3Optional = true;
      changed = true;
    }
    for (const n of m.nestedType ?? []) visit(n);
  };
  for (const m of file.messageType ?? []) visit(m);
  return changed ? Buffer.from(FileDescriptorProto.encode(file as never).finish()) : bin;
}
