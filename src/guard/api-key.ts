// The client's API key: x-api-key, else the Authorization bearer token. Rate limits,
// QoS tiers, priorities and quotas are all keyed by it.
export function apiKeyOf(headers: Readonly<Record<string, string>>): string | undefined {
  const k = headers['x-api-key'];
  if (k) return k;
  const auth = headers['authorization'];
  return auth !== undefined && auth.startsWith('Bearer ') ? auth.slice(7) : undefined;
}
