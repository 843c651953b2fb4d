// The newer client APIs on two data-plane threads.
process.env.FRONT_THREADS = '2';
await import('./apis.suite.ts');
