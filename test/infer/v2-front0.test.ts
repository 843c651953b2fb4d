// The v2 (Open Inference Protocol) suite on the main thread (FRONT_THREADS=0).
process.env.FRONT_THREADS = '0';
await import('./v2.suite.ts');
