// The descriptors reflection serves are ones a real validator accepts: map fields' entry types
// named as protoc names them (`<Field>Entry`), checked here and by Python's protobuf
// DescriptorPool, which is what a grpcio client builds from reflection.
import t from 'tap';
import descriptor from 'protobufjs/ext/descriptor/index.js';
import { spawnSync } from 'node:child_process';
import { startMock } from '../helpers/fleet.ts';
import { descriptorSet, reflectionClient, startGrpcFleetBroker } from '../helpers/grpc.ts';

const PYTHON = '/usr/bin/python3';

/** Adds a FileDescriptorSet (stdin, dependencies first) to a fresh pool, then finds argv[1] (a service) and its method argv[2]. */
const VALIDATE = `
import sys
from google.protobuf import descriptor_pb2, descriptor_pool
files = descriptor_pb2.FileDescriptorSet.FromString(sys.stdin.buffer.read()).file
pool = descriptor_pool.DescriptorPool()
for f in files:
    pool.Add(f)
    pool.FindFileByName(f.name)
service = pool.FindServiceByName(sys.argv[1])
method = pool.FindMethodByName(service.full_name + '.' + sys.argv[2])
print(method.full_name, method.input_type.full_name)
`;

function pythonProtobuf(): string | undefined {
  const r = spawnSync(PYTHON, ['-c', 'import google.protobuf.descriptor_pool'], { encoding: 'utf8' });
  if (r.error !== undefined) return `${PYTHON}: ${r.error.message}`;
  return r.status === 0 ? undefined : `${PYTHON} cannot import google.protobuf: ${r.stderr.trim().split('\n').at(-1)}`;
}

/** The FileDescriptorProtos reflection gives for a symbol: its file and what that file depends on. */
function fileContainingSymbol(client: any, symbol: string): Promise<Buffer[]> {
  return new Promise((resolve, reject) => {
    const call = client.ServerReflectionInfo();
    call.on('data', (r: any) => {
      call.end();
      if (r.file_descriptor_response) resolve(r.file_descriptor_response.file_descriptor_proto);
      else reject(new Error(`${symbol}: ${JSON.stringify(r.error_response)}`));
    });
    call.on('error', reject);
    call.write({ file_containing_symbol: symbol });
  });
}

/** The files, each after those it imports, as a FileDescriptorSet of the bytes as served. */
function orderedSet(bins: Buffer[]): Buffer {
  const byName = new Map(bins.map((b) => [(descriptor.FileDescriptorProto.decode(b) as any).name as string, b]));
  const done = new Set<string>();
  const ordered: Buffer[] = [];
  const add = (name: string): void => {
    if (done.has(name)) return;
    done.add(name);
    const b = byName.get(name);
    if (b === undefined) return; // not served: the pool will say so
    for (const d of (descriptor.FileDescriptorProto.decode(b) as any).dependency ?? []) add(d);
    ordered.push(b);
  };
  for (const name of byName.keys()) add(name);
  return descriptorSet(ordered);
}

interface MapField {
  message: string;
  field: string;
  typeName: string;
  entry: string;
}

/** Every map entry type of a file, with the field that refers to it by full name (if any does). */
function mapFields(bin: Buffer): MapField[] {
  const file = descriptor.FileDescriptorProto.decode(bin) as any;
  const out: MapField[] = [];
  const visit = (m: any, scope: string): void => {
    const full = `${scope}.${m.name}`;
    for (const n of m.nestedType ?? []) {
      if (n.options?.mapEntry !== true) continue;
      const f = (m.field ?? []).find((x: any) => x.typeName === `${full}.${n.name}` || x.typeName === n.name);
      out.push({ message: full, field: f?.name, typeName: f?.typeName, entry: n.name });
    }
    for (const n of m.nestedType ?? []) visit(n, full);
  };
  for (const m of file.messageType ?? []) visit(m, file.package ? `.${file.package}` : '');
  return out;
}

t.test('reflected descriptors have protoc-style map entries and load in Python protobuf', async (t) => {
  const m = await startMock(t, { tokens: 1 });
  const tb = await startGrpcFleetBroker(t, { modelGroups: { g: { deployments: [{ id: 'r-1', provider: 'openai', url: m.url, model: 'mock-model' }] } } });
  const rc = reflectionClient(tb.broker.grpcPort);
  t.teardown(() => rc.close());

  const v2 = await fileContainingSymbol(rc, 'inference.GRPCInferenceService');
  const maps = v2.flatMap(mapFields);
  // KServe v2 has five map<string, InferParameter> parameters.
  t.equal(maps.length, 5, 'five map entry types in inference.proto');
  for (const e of maps) {
    t.equal(e.entry, 'ParametersEntry', `${e.message}: entry named as protoc names it`);
    t.equal(e.field, 'parameters', `${e.message}: a field refers to the entry`);
    t.equal(e.typeName, `${e.message}.ParametersEntry`, `${e.message}.parameters points to the entry by full name`);
  }
  t.ok(maps.some((e) => e.message === '.inference.ModelInferRequest'), 'ModelInferRequest.parameters');

  const chat = await fileContainingSymbol(rc, 'edge_broker.v1.ChatService');
  const services: [string, string, Buffer[]][] = [
    ['inference.GRPCInferenceService', 'ModelInfer', v2],
    ['edge_broker.v1.ChatService', 'Chat', chat],
  ];
  const missing = pythonProtobuf();
  for (const [service, method, bins] of services) {
    if (missing !== undefined) {
      t.skip(`Python's DescriptorPool accepts ${service}'s files: ${missing}`, () => undefined);
      continue;
    }
    const r = spawnSync(PYTHON, ['-c', VALIDATE, service, method], { input: orderedSet(bins), encoding: 'utf8' });
    t.equal(r.status, 0, `Python's DescriptorPool accepts ${service}'s files and finds ${method}`, { stderr: r.stderr, stdout: r.stdout });
  }
});
