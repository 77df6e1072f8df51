/**
 * Client authentication vocabulary (Docker token auth spec: "Token Authentication Specification" and
 * "Token Scope Documentation"). The cache grants `pull` only: it is read-only.
 */

/** Who logged in, and which pull-through cache rule prefixes they may pull (`*` = every rule). */
export interface Identity {
  /** `user:<username>` or the caller's IAM ARN. Goes into the token's `sub`; never a secret. */
  subject: string;
  kind: 'user' | 'iam';
  prefixes: string[];
}

/**
 * Turns the credentials a client sent to the token endpoint into an identity, or `undefined` when they are
 * wrong. Never throws for bad credentials; throws only when it cannot decide (e.g. STS unreachable).
 */
export interface Authenticator {
  authenticate(username: string, password: string, sourceIp?: string): Promise<Identity | undefined>;
}
