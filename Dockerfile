# syntax=docker/dockerfile:1
#
# Edge Broker. The broker runs compiled: a build stage turns src/ into dist/ with tsc
# (`npm run build`), and the image runs `node dist/main.js` with the production
# dependencies only (`npm ci --omit=dev`): no TypeScript, no tsx, no sources.
#
#   docker build -t edge-broker .
#   docker run --rm -p 8080:8080 edge-broker
#
# The same image runs the mock LLM upstream (see compose.yml):
#   docker run --rm -p 9000:9000 edge-broker node dist/mock-upstream/main.js --port 9000 --host 0.0.0.0

ARG NODE_IMAGE=node:20-bookworm-slim

# --- build: all dependencies (TypeScript), no install scripts (tsc needs no native module)
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# --- production dependencies (with install scripts: sharp, onnxruntime-node; .npmrc and
#     ONNXRUNTIME_NODE_INSTALL tell onnxruntime-node not to download the CUDA provider),
#     and native/'s addon, built by our own install script (scripts/build-native.mjs) with
#     the compiler this stage installs and node's own headers
FROM ${NODE_IMAGE} AS prod-deps
ENV ONNXRUNTIME_NODE_INSTALL=skip
RUN apt-get update && apt-get install -y --no-install-recommends g++ make python3 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
COPY scripts/build-native.mjs ./scripts/
COPY native ./native
RUN npm ci --omit=dev --no-audit --no-fund \
    && test -f native/build/Release/edge_native.node \
    && npm cache clean --force

# --- runtime
FROM ${NODE_IMAGE}
ENV NODE_ENV=production \
    PORT=8080 \
    HOST=0.0.0.0
WORKDIR /app
# Code and dependencies stay owned by root: the process (user node) can read them, not change them.
COPY --from=prod-deps /app/node_modules ./node_modules
COPY --from=prod-deps /app/native/build/Release/edge_native.node ./native/build/Release/
COPY --from=build /app/dist ./dist
COPY package.json package-lock.json ./
COPY config ./config
# The bundled models and their manifests (MODEL_VA_PATH / MODEL_VB_PATH default to models/vA.onnx, models/vB.onnx).
COPY models ./models
# The gRPC contract: the server loads it at start (and serves it by reflection).
COPY proto ./proto
# Request tracking's SQL migrations (applied at start-up when DATABASE_URL is set).
COPY migrations ./migrations

# Fail the build, not the first start, if a module (uWebSockets.js, sharp, onnxruntime-node, a
# dependency left in devDependencies) cannot load. loadUws() also writes the patched uWS addon
# (docs/operations.md, header names) into node_modules/.cache while the build runs as root: user node reads it.
RUN node --input-type=module -e "await import('./dist/app.js'); (await import('./dist/front/http/uws.js')).loadUws(); await import('sharp'); await import('onnxruntime-node'); const { describeConversion } = await import('./dist/infer/native.js'); const d = describeConversion('auto'); if (d.path !== 'native') throw new Error(d.reason)"

USER node
EXPOSE 8080
# gRPC (GRPC_PORT)
EXPOSE 50051
STOPSIGNAL SIGTERM
# No curl in the slim image: Node's fetch. The port follows PORT.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 8080) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# `npm start` without npm (and its prestart build): node itself is PID 1, so SIGTERM reaches
# main.ts's graceful shutdown.
CMD ["node", "dist/main.js"]
