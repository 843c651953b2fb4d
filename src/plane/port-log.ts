// A data-plane thread's log destination: pino writes lines here, and they reach the
// control plane's one destination in batches (one message per event-loop turn, not
// one per line), so every thread's lines land in one stream with their trace ids.
export function portLogStream(post: (text: string) => void): { write(line: string): boolean; flush(): void } {
  let buffered = '';
  let scheduled = false;
  const flush = (): void => {
    scheduled = false;
    if (buffered === '') return;
    const text = buffered;
    buffered = '';
    post(text);
  };
  return {
    write(line: string): boolean {
      buffered += line;
      if (!scheduled) {
        scheduled = true;
        setImmediate(flush);
      }
      return true;
    },
    flush,
  };
}
