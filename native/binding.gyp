# The per-pixel conversion of src/infer/preprocess.ts's toTensor, as a Node-API addon.
# Built by `npm ci` (scripts/build-native.mjs) against the installed Node's headers; a
# failed build leaves the broker on the JavaScript path.
{
  "targets": [
    {
      "target_name": "edge_native",
      "sources": ["src/addon.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-O3", "-std=c++17"],
      "xcode_settings": { "OTHER_CPLUSPLUSFLAGS": ["-O3", "-std=c++17"] }
    }
  ]
}
