// Ollama's load and unload requests: /api/generate with no prompt, /api/chat with no
// messages (`ollama run`'s preload; `keep_alive: 0` is `ollama stop`). Ollama answers them
// itself with one JSON object, done_reason "load" or "unload", and no generation. Here
// they are answered the same way, without an upstream call: the fleet's servers load
// models on their first request, and no one server is "the" model to unload. Sent on as
// they were, an OpenAI-compatible upstream made a billed completion of an empty prompt.

/** The reply to a load or unload request, or undefined when `body` asks for a generation. */
export function ollamaLoadReply(kind: 'chat' | 'completion', body: Readonly<Record<string, unknown>>, now: Date): string | undefined {
  if (kind === 'chat') {
    const m = body.messages;
    if (!(m === undefined || m === null || (Array.isArray(m) && m.length === 0))) return undefined;
  } else {
    const p = body.prompt;
    const images = body.images;
    if (!(p === undefined || p === null || p === '') || (Array.isArray(images) && images.length > 0)) return undefined;
    // A suffix alone is a fill-in-the-middle request, not a load.
    if (typeof body.suffix === 'string' && body.suffix !== '') return undefined;
  }
  const unload = zeroDuration(body.keep_alive);
  const head = { model: body.model, created_at: now.toISOString() };
  const done = { done_reason: unload ? 'unload' : 'load', done: true };
  return JSON.stringify(kind === 'chat' ? { ...head, message: { role: 'assistant', content: '' }, ...done } : { ...head, response: '', ...done });
}

/** keep_alive of zero: a number (seconds) or a Go duration ("0", "0s", "0m", "0h0m0s", "0.0ms"). */
function zeroDuration(v: unknown): boolean {
  if (typeof v === 'number') return v === 0;
  return typeof v === 'string' && /^[+-]?(?:0+(?:\.0*)?(?:ns|us|µs|ms|s|m|h)?)+$/.test(v) && /^[+-]?0/.test(v);
}
