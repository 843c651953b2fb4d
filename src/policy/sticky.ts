// Sticky routing: a hash of the prompt prefix (system prompt and first messages,
// bounded bytes) pins a deployment for a TTL, so the upstream's prompt cache stays
// warm. The caller drops a pin whose deployment cannot take the request.
import { createHash } from 'node:crypto';
import type { PromptParts } from '../llm/request.ts';

export class StickyPins {
  private readonly pins = new Map<string, { id: string; expiresAt: number }>();
  hits = 0;
  misses = 0;

  constructor(
    private readonly ttlMs: number,
    private readonly maxPins = 100_000,
    private readonly now: () => number = Date.now,
  ) {}

  get(key: string): string | undefined {
    const p = this.pins.get(key);
    if (p === undefined) return undefined;
    if (p.expiresAt <= this.now()) {
      this.pins.delete(key);
      return undefined;
    }
    return p.id;
  }

  pin(key: string, id: string): void {
    if (this.pins.size >= this.maxPins && !this.pins.has(key)) {
      // Map iteration is insertion order: the first entry is the oldest pin.
      const oldest = this.pins.keys().next().value;
      if (oldest !== undefined) this.pins.delete(oldest);
    }
    this.pins.delete(key);
    this.pins.set(key, { id, expiresAt: this.now() + this.ttlMs });
  }

  drop(key: string): void {
    this.pins.delete(key);
  }

  get size(): number {
    return this.pins.size;
  }
}

/** The prompt prefix that decides affinity: system prompt and first messages, or the prompt, up to maxBytes. */
export function prefixKey(r: PromptParts, group: string, maxBytes: number): string | undefined {
  let text = '';
  if (r.messages !== undefined) {
    for (const m of r.messages.slice(0, 3)) {
      const c = (m as { content?: unknown })?.content;
      text += typeof c === 'string' ? c : JSON.stringify(c ?? '');
      text += '\u0000';
      if (text.length >= maxBytes) break;
    }
  } else if (r.prompt !== undefined) text = r.prompt;
  if (r.system !== undefined) text = r.system + '\u0000' + text;
  if (text === '') return undefined;
  return createHash('sha1').update(group).update('\u0000').update(Buffer.from(text).subarray(0, maxBytes)).digest('base64url');
}
