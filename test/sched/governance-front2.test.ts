// Governance end to end on two data-plane threads: limits, queues, pins and lessons cross threads.
process.env.FRONT_THREADS = '2';
await import('./governance.suite.ts');
