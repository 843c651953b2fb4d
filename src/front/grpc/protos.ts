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
 * What reflection serves: the package definition with what protoc's descriptors have and
 * proto-loader's lack. An `optional` field says so (`proto3_optional`): protobufjs keeps only
 * its synthetic oneof `_<field>`, which tools then show as a real oneof. A map field's entry
 * type is named `<Field>Entry`: protobufjs names it `<Field>`, which Python's descriptor pool
 * and Go's protodesc reject. And the reflection services themselves are listed (`grpcurl list`
 * shows them for a server in Go or Java).
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
      if (f === undefined) fixed.set(b, (f = withProtocFields(b)));
      return f;
    });
    out[name] = { ...def, fileDescriptorProtos: bins } as protoLoader.PackageDefinition[string];
  }
  return out;
}

interface FieldDescriptor {
  name?: string;
  label?: number;
  type?: number;
  typeName?: string;
  oneofIndex?: number;
  proto3Optional?: boolean;
}
interface MessageDescriptor {
  name?: string;
  field?: FieldDescriptor[];
  oneofDecl?: { name?: string }[];
  nestedType?: MessageDescriptor[];
  options?: { mapEntry?: boolean } | null;
}

/** protoc's name for a map field's entry type: its ToCamelCase, first letter upper, + `Entry` (`my_map` → `MyMapEntry`). */
function mapEntryName(field: string): string {
  let out = '';
  let upper = true;
  for (const c of field) {
    if (c === '_') upper = true;
    else {
      out += upper ? c.toUpperCase() : c;
      upper = false;
    }
  }
  return `${out}Entry`;
}

/**
 * A file descriptor with its fields as protoc writes them: a field alone in a oneof named
 * `_<field>` is marked proto3_optional, and a map field's entry type is `<Field>Entry`,
 * referenced by its full name.
 */
function withProtocFields(bin: Buffer): Buffer {
  const FileDescriptorProto = descriptor.FileDescriptorProto;
  const file = FileDescriptorProto.decode(bin) as unknown as { package?: string; messageType?: MessageDescriptor[] };
  let changed = false;
  const visit = (m: MessageDescriptor, scope: string): void => {
    const fullName = `${scope}.${m.name}`;
    const fields = m.field ?? [];
    for (const f of fields) {
      // Decoded messages carry defaults on their prototype: an unset oneofIndex reads 0.
      if (!Object.hasOwn(f, 'oneofIndex')) continue;
      const o = f.oneofIndex!;
      if (m.oneofDecl?.[o]?.name !== `_${f.name}` || fields.filter((x) => Object.hasOwn(x, 'oneofIndex') && x.oneofIndex === o).length !== 1) continue;
      f.proto3Optional = true;
      changed = true;
    }
    // protobufjs names the entry after the field (`parameters` → `Parameters`) and refers to it by that relative name.
    for (const n of m.nestedType ?? []) {
      if (n.options?.mapEntry !== true) continue;
      const f = fields.find((x) => x.label === 3 && x.type === 11 && x.typeName === n.name && `${x.name!.charAt(0).toUpperCase()}${x.name!.slice(1)}` === n.name);
      if (f === undefined) continue;
      n.name = mapEntryName(f.name!);
      f.typeName = `${fullName}.${n.name}`;
      changed = true;
    }
    for (const n of m.nestedType ?? []) visit(n, fullName);
  };
  for (const m of file.messageType ?? []) visit(m, file.package ? `.${file.package}` : '');
  return changed ? Buffer.from(FileDescriptorProto.encode(file as never).finish()) : bin;
}
