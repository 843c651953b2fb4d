// Server processes a test starts, kills and restarts (redis-server, a mock upstream in a
// process of its own, PostgreSQL): spawned, ready when their output says so, SIGKILLed.
import { spawn, type ChildProcess } from 'node:child_process';

/**
 * The node arguments that run `file`, a TypeScript module of the repo (an absolute path, or
 * relative to the child's cwd): through tsx when the tests run from the sources; when they run
 * compiled (`npm test`: .test-build/, where this module too is .js), its compiled .js twin, with
 * nothing of tsx.
 */
export function runTs(file: string): string[] {
  return import.meta.url.endsWith('.js') ? [file.replace(/\.ts$/, '.js')] : ['--import', 'tsx', file];
}

/**
 * Spawns `cmd` and resolves once `ready` finds what it waits for in the stdout so far
 * (its value is returned); rejects with the output's tail if the process exits first.
 */
export function spawnReady<T>(cmd: string, args: readonly string[], ready: (stdout: string) => T | undefined): Promise<{ child: ChildProcess; value: T }> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const value = ready(out);
      if (value !== undefined) resolve({ child, value });
    });
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`${cmd} exited with ${code}: ${out.slice(-500)}`)));
  });
}

/** SIGKILL: the process is gone at once, its connections reset. Resolves when it has exited. */
export async function sigkill(c: ChildProcess | undefined): Promise<void> {
  if (c === undefined || c.exitCode !== null || c.signalCode !== null) return;
  await new Promise<void>((resolve) => {
    c.once('exit', () => resolve());
    c.kill('SIGKILL');
  });
}
