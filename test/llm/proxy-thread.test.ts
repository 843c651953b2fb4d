process.env.LLM_EXECUTION = 'thread';
await import('./proxy.suite.ts');
