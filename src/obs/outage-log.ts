// An outage of a dependency (Redis) said once in the log, and its end once: not a line per
// failed command, which under load would be thousands a second.
import type { Logger } from './logger.ts';

export class OutageLog {
  private down = false;

  /** `failed`: the warning when the outage begins; `back`: the line when it ends. */
  constructor(
    private readonly logger: Logger,
    private readonly failedLine: string,
    private readonly backLine: string,
  ) {}

  failed(err: Error): void {
    if (this.down) return;
    this.down = true;
    this.logger.warn({ err: err.message }, this.failedLine);
  }

  /** True when this ends an outage. */
  answered(): boolean {
    if (!this.down) return false;
    this.down = false;
    this.logger.info(this.backLine);
    return true;
  }
}
