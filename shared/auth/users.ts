/**
 * The {@link Authenticator} of token mode: users and robot accounts from the config (`auth.users`), each with
 * an scrypt password hash and the rule prefixes it may pull. An unknown username costs the same scrypt work as
 * a wrong password, so response times do not tell which usernames exist.
 */
import { randomBytes } from 'node:crypto';
import type { AuthConfig } from '../config.js';
import { hashPassword, verifyPassword } from './passwords.js';
import type { Authenticator, Identity } from './types.js';

/** Builds the authenticator over the configured users. */
export function createUserAuthenticator(users: AuthConfig['users']): Authenticator {
  const byName = new Map(users.map((u) => [u.username, u]));
  let dummy: Promise<string> | undefined;
  return {
    async authenticate(username, password): Promise<Identity | undefined> {
      const user = byName.get(username);
      if (!user) {
        dummy ??= hashPassword(randomBytes(16).toString('base64'));
        await verifyPassword(password, await dummy);
        return undefined;
      }
      if (!(await verifyPassword(password, user.passwordHash))) return undefined;
      return { subject: `user:${user.username}`, kind: 'user', prefixes: [...user.prefixes] };
    },
  };
}
