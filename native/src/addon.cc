// edge_native: uint8 pixels -> the model's float32 input tensor, as toTensor() in
// src/infer/preprocess.ts does it, for the same arguments and bit for bit the same
// output: the per-channel tables (256 float32 each, mean/std already applied) come from
// JavaScript, so both paths read the very same floats. Kept only while bench:infer shows
// it pays (docs/benchmarks.md, "native/").
#include <napi.h>
#include <cstdint>

namespace {

// toTensor(raw: Uint8Array, got: number, plane: number, nhwc: boolean,
//          tables: Float32Array (channels x 256), out: Float32Array (channels x plane))
// `got`: bytes per pixel in raw (>= channels); channels = tables.length / 256 (1 or 3).
Napi::Value ToTensor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() != 6 || !info[0].IsTypedArray() || !info[1].IsNumber() || !info[2].IsNumber() ||
      !info[3].IsBoolean() || !info[4].IsTypedArray() || !info[5].IsTypedArray()) {
    Napi::TypeError::New(env, "toTensor(raw, got, plane, nhwc, tables, out)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto rawArr = info[0].As<Napi::TypedArray>();
  auto tabArr = info[4].As<Napi::TypedArray>();
  auto outArr = info[5].As<Napi::TypedArray>();
  if (rawArr.TypedArrayType() != napi_uint8_array || tabArr.TypedArrayType() != napi_float32_array ||
      outArr.TypedArrayType() != napi_float32_array) {
    Napi::TypeError::New(env, "toTensor: raw must be a Uint8Array, tables and out Float32Arrays").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const int64_t got = info[1].As<Napi::Number>().Int64Value();
  const int64_t plane = info[2].As<Napi::Number>().Int64Value();
  const bool nhwc = info[3].As<Napi::Boolean>().Value();
  const size_t channels = tabArr.ElementLength() / 256;
  const uint8_t* raw = info[0].As<Napi::Uint8Array>().Data();
  const float* tables = info[4].As<Napi::Float32Array>().Data();
  float* out = info[5].As<Napi::Float32Array>().Data();
  // Every read and write stays inside the arrays, whatever JavaScript passed.
  if ((channels != 1 && channels != 3) || tabArr.ElementLength() != channels * 256 || plane < 0 ||
      got < static_cast<int64_t>(channels) || static_cast<uint64_t>(plane) * got > rawArr.ElementLength() ||
      static_cast<uint64_t>(plane) * channels > outArr.ElementLength()) {
    Napi::RangeError::New(env, "toTensor: sizes do not match").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const size_t n = static_cast<size_t>(plane);
  const size_t step = static_cast<size_t>(got);
  if (channels == 1) {
    const float* t0 = tables;
    for (size_t i = 0, j = 0; i < n; i++, j += step) out[i] = t0[raw[j]];
  } else if (!nhwc) {
    const float* t0 = tables;
    const float* t1 = tables + 256;
    const float* t2 = tables + 512;
    float* o0 = out;
    float* o1 = out + n;
    float* o2 = out + 2 * n;
    for (size_t i = 0, j = 0; i < n; i++, j += step) {
      o0[i] = t0[raw[j]];
      o1[i] = t1[raw[j + 1]];
      o2[i] = t2[raw[j + 2]];
    }
  } else {
    const float* t0 = tables;
    const float* t1 = tables + 256;
    const float* t2 = tables + 512;
    for (size_t i = 0, j = 0, o = 0; i < n; i++, j += step, o += 3) {
      out[o] = t0[raw[j]];
      out[o + 1] = t1[raw[j + 1]];
      out[o + 2] = t2[raw[j + 2]];
    }
  }
  return env.Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("toTensor", Napi::Function::New(env, ToTensor, "toTensor"));
  return exports;
}

}  // namespace

NODE_API_MODULE(edge_native, Init)
