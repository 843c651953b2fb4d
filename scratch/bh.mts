import { createBlackhole } from '../src/mock-upstream/blackhole.ts';
import { Pool } from 'undici';
const t0 = Date.now();
const bh = await createBlackhole();
console.log('ready', Date.now() - t0, bh.url);
const pool = new Pool(bh.url, { connectTimeout: 300 });
const t1 = Date.now();
try { await pool.request({ method: 'GET', path: '/' }); console.log('answered?!'); } catch (e) { console.log('err', (e as any).code, Date.now() - t1); }
await pool.close(); await bh.close(); console.log('closed');
