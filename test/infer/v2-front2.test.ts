// The v2 (Open Inference Protocol) suite on two data-plane threads, which forward /v2 to the control plane.
process.env.FRONT_THREADS = '2';
await import('./v2.suite.ts');
