// The client's address behind trusted proxies (TRUSTED_PROXIES). Behind an ingress or a load
// balancer every connection comes from the proxy: keyed on the peer, every anonymous client
// shares one rate-limit bucket, and one client's wrong admin tokens lock every admin out. A
// peer in the list is a proxy whose X-Forwarded-For is believed: its entries are read right
// to left, past the trusted ones, and the first other address is the client's. An untrusted
// peer's header is ignored (anyone can send one), as is the whole header when TRUSTED_PROXIES
// is unset.
import { BlockList, isIP } from 'node:net';

/** Whether an address is one of the trusted proxies. */
export type TrustedProxies = (address: string) => boolean;

/** TRUSTED_PROXIES: addresses and CIDR blocks, comma-separated (IPv4 and IPv6). Throws naming a bad entry. */
export function parseTrustedProxies(raw: string): TrustedProxies | undefined {
  const entries = raw
    .split(',')
    .map((e) => e.trim())
    .filter((e) => e !== '');
  if (entries.length === 0) return undefined;
  const list = new BlockList();
  for (const e of entries) {
    const [ip, bits, extra] = e.split('/');
    const family = isIP(ip ?? '');
    const type = family === 6 ? 'ipv6' : 'ipv4';
    if (family === 0 || extra !== undefined) throw new Error(`"${e}" is not an IP address or a CIDR block (10.0.0.0/8, fd00::/8)`);
    if (bits === undefined) {
      list.addAddress(ip!, type);
      continue;
    }
    const prefix = /^\d{1,3}$/.test(bits) ? Number(bits) : NaN;
    if (!(prefix >= 0 && prefix <= (family === 6 ? 128 : 32))) throw new Error(`"${e}" has a prefix length that is not 0-${family === 6 ? 128 : 32}`);
    list.addSubnet(ip!, prefix, type);
  }
  return (address) => {
    const a = plain(address);
    const family = isIP(a);
    return family !== 0 && list.check(a, family === 6 ? 'ipv6' : 'ipv4');
  };
}

/** The client's address: the peer's, or behind trusted proxies the first untrusted one they forwarded. */
export function clientAddress(peer: string, forwardedFor: string | undefined, trusted: TrustedProxies | undefined): string {
  if (trusted === undefined || forwardedFor === undefined || !trusted(peer)) return peer;
  const hops = forwardedFor.split(',');
  let client = peer;
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = plain(hops[i]!.trim());
    // A hop that is no address (a proxy's "unknown", garbage): nothing left of it can be believed.
    if (isIP(hop) === 0) return client;
    client = hop;
    if (!trusted(hop)) return hop;
  }
  return client;
}

/**
 * The address alone: without the port some proxies add (Azure's Application Gateway writes
 * 203.0.113.9:51234, and [2001:db8::5]:443 for IPv6), and an IPv4 address as IPv6
 * (::ffff:10.0.0.1, how a dual-stack socket reports it) as IPv4.
 */
function plain(address: string): string {
  const a = /^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$/.exec(address)?.[1] ?? /^\[([0-9a-fA-F:.]+)\](?::\d{1,5})?$/.exec(address)?.[1] ?? address;
  return a.startsWith('::ffff:') && a.includes('.') ? a.slice(7) : a;
}
