// Reading the broker's /metrics text in the benches.

/** Sum and count of a Prometheus histogram from /metrics text, over the label sets that contain `labelFilter`. */
export function histogramTotals(metricsText: string, name: string, labelFilter = ''): { sum: number; count: number } {
  let sum = 0;
  let count = 0;
  for (const line of metricsText.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (m === null || !(m[2] ?? '').includes(labelFilter)) continue;
    if (m[1] === `${name}_sum`) sum += Number(m[3]);
    else if (m[1] === `${name}_count`) count += Number(m[3]);
  }
  return { sum, count };
}

export async function scrapeMetrics(url: string): Promise<string> {
  const res = await fetch(`${url}/metrics`);
  return res.text();
}
