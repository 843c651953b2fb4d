// The newer client APIs on the main thread (FRONT_THREADS=0).
process.env.FRONT_THREADS = '0';
await import('./apis.suite.ts');
