// A real PostgreSQL cluster for a test file: initdb and pg_ctl (Debian's postgresql
// package; .ci/run installs it) in a temp dir, on a free port, stopped and started
// again by the test, removed at teardown. initdb refuses to run as root: as root, the
// cluster runs as the `postgres` user (runuser), which owns the temp dir.
import { execFileSync, spawnSync } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { freePort } from '../../bench/lib/process.ts';

interface Teardown {
  teardown(fn: () => unknown): void;
}

export interface PostgresProcess {
  readonly port: number;
  /** postgres://postgres@127.0.0.1:<port>/postgres */
  readonly url: string;
  /** The cluster's data directory (its postmaster.pid names the server's process). */
  readonly dataDir: string;
  /** A fresh, empty database on this cluster: its URL. */
  createDatabase(name: string): Promise<string>;
  /** Stops the server (fast mode: connections are cut, committed rows kept; immediate mode would lose the last commits, as synchronous_commit is off). */
  stop(): Promise<void>;
  /** Starts it again on the same port, with its data. */
  start(): Promise<void>;
}

/** The directory of initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin (newest). */
export function postgresBinDir(): string | undefined {
  const which = spawnSync('sh', ['-c', 'command -v initdb'], { encoding: 'utf8' });
  const onPath = which.status === 0 ? which.stdout.trim() : '';
  if (onPath !== '') return join(onPath, '..');
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root)
    .filter((v) => existsSync(join(root, v, 'bin', 'initdb')))
    .sort((a, b) => Number(b) - Number(a));
  return versions[0] === undefined ? undefined : join(root, versions[0], 'bin');
}

export async function startPostgres(t: Teardown): Promise<PostgresProcess> {
  const bin = postgresBinDir();
  if (bin === undefined) throw new Error('PostgreSQL is not installed: apt-get install postgresql (.ci/run installs it)');
  const root = process.getuid?.() === 0;
  const dir = mkdtempSync(join(tmpdir(), 'eb-pg-'));
  const data = join(dir, 'data');
  if (root) {
    // The postgresql package makes this user; a PostgreSQL built from source may not have.
    if (spawnSync('id', ['-u', 'postgres']).status !== 0) execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', 'postgres']);
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
    chownSync(dir, uid, gid);
  }
  // As root, every cluster command runs as postgres.
  const run = (cmd: string, args: string[]): void => {
    const full = join(bin, cmd);
    const r = root ? spawnSync('runuser', ['-u', 'postgres', '--', full, ...args], { encoding: 'utf8' }) : spawnSync(full, args, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${cmd} failed (${r.status}): ${r.stderr || r.stdout}`);
  };
  run('initdb', ['-D', data, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8', '--locale=C']);
  const port = await freePort();
  // Durability off: a test cluster trades it for speed.
  const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100`;
  let running = false;
  const start = async (): Promise<void> => {
    run('pg_ctl', ['-D', data, '-l', join(dir, 'log'), '-o', options, '-w', '-t', '60', 'start']);
    running = true;
  };
  const stop = async (): Promise<void> => {
    if (!running) return;
    running = false;
    run('pg_ctl', ['-D', data, '-m', 'fast', '-w', 'stop']);
  };
  await start();
  // pg_ctl daemonizes the server: a process that exits before its teardown (a bench's Ctrl-C
  // goes through process.exit) would leave the cluster running, its directory behind.
  const atExit = (): void => {
    try {
      if (running) run('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop']);
    } catch {
      // exiting anyway
    }
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('exit', atExit);
  t.teardown(async () => {
    process.off('exit', atExit);
    await stop().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  return {
    port,
    url,
    dataDir: data,
    async createDatabase(name) {
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      try {
        await c.query(`CREATE DATABASE ${name}`);
      } finally {
        await c.end();
      }
      return `postgres://postgres@127.0.0.1:${port}/${name}`;
    },
    stop,
    start,
  };
}
