// The LLM suite with LLM_EXECUTION=pool (main-thread front, streams in pool workers).
process.env.FRONT_THREADS = '0';
process.env.LLM_EXECUTION = 'pool';
await import('./proxy.suite.ts');
