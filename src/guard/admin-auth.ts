// Admin credential: `Authorization: Bearer $ADMIN_TOKEN`, compared in constant time.
import { createHash, timingSafeEqual } from 'node:crypto';
import { BrokerError } from '../errors.ts';

export type AdminCheck = (authorization: string | undefined) => void;

export function createAdminCheck(token: string | undefined): AdminCheck {
  if (token === undefined) {
    return () => {
      throw new BrokerError('admin_disabled');
    };
  }
  // Hash both sides so the compare is constant-time whatever the lengths.
  const expected = createHash('sha256').update(token).digest();
  return (authorization) => {
    if (authorization === undefined || !authorization.startsWith('Bearer ')) throw new BrokerError('unauthorized', 'admin routes need Authorization: Bearer <ADMIN_TOKEN>');
    const got = createHash('sha256').update(authorization.slice(7)).digest();
    if (!timingSafeEqual(got, expected)) throw new BrokerError('forbidden', 'admin token is not valid');
  };
}
