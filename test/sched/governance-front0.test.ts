// Governance end to end on the main thread (FRONT_THREADS=0).
process.env.FRONT_THREADS = '0';
await import('./governance.suite.ts');
