// A few protobuf messages encoded by hand, where building an object for protobufjs
// to serialize would cost more than the message: the GenerateResponse of a Chat or
// Complete stream (once per upstream chunk, from the compiled chain's gRPC encoder)
// and the google.rpc.Status of an error (grpc-status-details-bin). Field numbers are
// those of proto/edge_broker/v1/chat.proto and google/rpc/{status,error_details}.proto;
// test/grpc/wire.test.ts decodes these bytes with the .proto files to keep them honest.
//
// The chain hands the gRPC sink *delimited* messages (each prefixed by its varint
// length, protobuf's writeDelimited framing): one upstream chunk may yield a delta and
// the final message, and each must be its own gRPC message.

const LEN = 2;
const VARINT = 0;

function varintSize(n: number): number {
  let size = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    size++;
  }
  return size;
}

class Writer {
  readonly buf: Buffer;
  pos = 0;

  constructor(size: number) {
    this.buf = Buffer.allocUnsafe(size);
  }

  varint(n: number): this {
    while (n >= 0x80) {
      this.buf[this.pos++] = (n & 0x7f) | 0x80;
      n = Math.floor(n / 128);
    }
    this.buf[this.pos++] = n;
    return this;
  }

  tag(field: number, wire: number): this {
    return this.varint((field << 3) | wire);
  }

  /** A length-delimited field whose payload is `len` bytes; the caller writes them next. */
  lenField(field: number, len: number): this {
    return this.tag(field, LEN).varint(len);
  }

  string(field: number, s: string, bytes: number): this {
    this.lenField(field, bytes);
    this.pos += this.buf.write(s, this.pos, 'utf8');
    return this;
  }

  bytes(field: number, b: Uint8Array): this {
    this.lenField(field, b.byteLength);
    this.buf.set(b, this.pos);
    this.pos += b.byteLength;
    return this;
  }
}

/** Size of a length-delimited field with a payload of `len` bytes. */
function lenFieldSize(field: number, len: number): number {
  return varintSize(field << 3) + varintSize(len) + len;
}

function varintFieldSize(field: number, n: number): number {
  return varintSize(field << 3) + varintSize(n);
}

/** GenerateResponse{delta: Delta{role, content}}, delimited. Empty strings are omitted (proto3 defaults). */
export function deltaMessage(role: string, content: string): Buffer {
  const roleBytes = role === '' ? 0 : Buffer.byteLength(role);
  const contentBytes = content === '' ? 0 : Buffer.byteLength(content);
  const delta = (roleBytes > 0 ? lenFieldSize(1, roleBytes) : 0) + (contentBytes > 0 ? lenFieldSize(2, contentBytes) : 0);
  const msg = lenFieldSize(1, delta);
  const w = new Writer(varintSize(msg) + msg);
  w.varint(msg).lenField(1, delta);
  if (roleBytes > 0) w.string(1, role, roleBytes);
  if (contentBytes > 0) w.string(2, content, contentBytes);
  return w.buf;
}

/** GenerateResponse{final: Final{finish_reason, usage}}, delimited. */
export function finalMessage(finishReason: string, promptTokens: number, completionTokens: number): Buffer {
  const total = promptTokens + completionTokens;
  const usage = (promptTokens > 0 ? varintFieldSize(1, promptTokens) : 0) + (completionTokens > 0 ? varintFieldSize(2, completionTokens) : 0) + (total > 0 ? varintFieldSize(3, total) : 0);
  const reasonBytes = finishReason === '' ? 0 : Buffer.byteLength(finishReason);
  const final = (reasonBytes > 0 ? lenFieldSize(1, reasonBytes) : 0) + lenFieldSize(2, usage);
  const msg = lenFieldSize(2, final);
  const w = new Writer(varintSize(msg) + msg);
  w.varint(msg).lenField(2, final);
  if (reasonBytes > 0) w.string(1, finishReason, reasonBytes);
  w.lenField(2, usage);
  if (promptTokens > 0) w.tag(1, VARINT).varint(promptTokens);
  if (completionTokens > 0) w.tag(2, VARINT).varint(completionTokens);
  if (total > 0) w.tag(3, VARINT).varint(total);
  return w.buf;
}

/** Calls `each` with every message of a buffer of delimited messages (views, no copy). */
export function forEachDelimited(buf: Uint8Array, each: (message: Uint8Array) => void): void {
  let pos = 0;
  while (pos < buf.byteLength) {
    let len = 0;
    let shift = 1;
    let b: number;
    do {
      b = buf[pos++]!;
      len += (b & 0x7f) * shift;
      shift *= 128;
    } while (b >= 0x80);
    each(buf.subarray(pos, pos + len));
    pos += len;
  }
}

/**
 * google.rpc.Status{code, message, details: [ErrorInfo{reason, domain}, RetryInfo{retry_delay}]},
 * for grpc-status-details-bin. ErrorInfo.reason is the broker's error code; RetryInfo
 * is there only when a retry time is known.
 */
export function statusDetails(grpcCode: number, message: string, brokerCode: string, retryAfterS: number | undefined): Buffer {
  const anyOf = (typeUrl: string, value: Buffer): Buffer => {
    const urlBytes = Buffer.byteLength(typeUrl);
    const w = new Writer(lenFieldSize(1, urlBytes) + lenFieldSize(2, value.byteLength));
    w.string(1, typeUrl, urlBytes).bytes(2, value);
    return w.buf;
  };
  const reasonBytes = Buffer.byteLength(brokerCode);
  const domain = 'edge-broker';
  const info = new Writer(lenFieldSize(1, reasonBytes) + lenFieldSize(2, domain.length));
  info.string(1, brokerCode, reasonBytes).string(2, domain, domain.length);
  const details = [anyOf('type.googleapis.com/google.rpc.ErrorInfo', info.buf)];
  if (retryAfterS !== undefined) {
    const seconds = Math.max(0, Math.floor(retryAfterS));
    const nanos = Math.round((Math.max(0, retryAfterS) - seconds) * 1e9);
    const durSize = (seconds > 0 ? varintFieldSize(1, seconds) : 0) + (nanos > 0 ? varintFieldSize(2, nanos) : 0);
    const d = new Writer(lenFieldSize(1, durSize));
    d.lenField(1, durSize);
    if (seconds > 0) d.tag(1, VARINT).varint(seconds);
    if (nanos > 0) d.tag(2, VARINT).varint(nanos);
    details.push(anyOf('type.googleapis.com/google.rpc.RetryInfo', d.buf));
  }
  const messageBytes = Buffer.byteLength(message);
  const size = (grpcCode > 0 ? varintFieldSize(1, grpcCode) : 0) + (messageBytes > 0 ? lenFieldSize(2, messageBytes) : 0) + details.reduce((n, b) => n + lenFieldSize(3, b.byteLength), 0);
  const w = new Writer(size);
  if (grpcCode > 0) w.tag(1, VARINT).varint(grpcCode);
  if (messageBytes > 0) w.string(2, message, messageBytes);
  for (const b of details) w.bytes(3, b);
  return w.buf;
}
