process.env.LLM_EXECUTION = 'pool';
await import('./proxy.suite.ts');
