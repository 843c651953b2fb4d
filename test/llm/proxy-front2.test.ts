// The LLM suite on two data-plane threads.
process.env.FRONT_THREADS = '2';
await import('./proxy.suite.ts');
