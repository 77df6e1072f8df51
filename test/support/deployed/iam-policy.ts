/**
 * IAM policy evaluation for the IAM gate (./iam-gate.ts), reduced to what the stack's roles use: Allow and Deny
 * statements, `*` and `?` wildcards in actions and resources, and conditions with the String operators
 * (StringEquals, StringNotEquals, StringLike, StringNotLike, and their `IfExists` forms) on request context keys
 * the gate supplies (`s3:prefix`, …). A condition on a key the gate does not supply, or with another operator,
 * does not hold, so such a statement grants nothing here: a role relying on one fails loudly, to be added here.
 */

/** One statement (the parts evaluated). */
export interface PolicyStatement {
  Effect: 'Allow' | 'Deny';
  Action: string | string[];
  Resource: string | string[];
  Condition?: Record<string, Record<string, string | string[]>>;
}

/** An IAM policy document. */
export interface PolicyDocument {
  Statement: PolicyStatement[];
}

/** `pattern` with IAM's `*` and `?` wildcards as a regular expression. */
const glob = (pattern: string, flags = '') => new RegExp(`^${pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`, flags);

/** Whether one condition operator block holds for `context` (every key; any of a key's values). */
function conditionHolds(operator: string, block: Record<string, string | string[]>, context: Record<string, string>): boolean {
  const ifExists = operator.endsWith('IfExists');
  const op = ifExists ? operator.slice(0, -'IfExists'.length) : operator;
  const test: Record<string, (actual: string, wanted: string) => boolean> = {
    StringEquals: (a, w) => a === w,
    StringLike: (a, w) => glob(w).test(a),
  };
  const negated = op === 'StringNotEquals' || op === 'StringNotLike';
  const check = test[negated ? op.replace('Not', '') : op];
  if (!check) return false;
  return Object.entries(block).every(([key, wanted]) => {
    const actual = context[key];
    if (actual === undefined) return ifExists;
    const any = [wanted].flat().some((w) => check(actual, w));
    return negated ? !any : any;
  });
}

/**
 * Whether `policies` allow `action` on `resource` for a request with condition `context`: an explicit Deny wins,
 * then any Allow. Action names are case-insensitive, resource ARNs are not.
 */
export function policiesAllow(policies: PolicyDocument[], action: string, resource: string, context: Record<string, string> = {}): boolean {
  const matches = (s: PolicyStatement) =>
    [s.Action].flat().some((a) => glob(a, 'i').test(action)) &&
    [s.Resource].flat().some((r) => glob(r).test(resource)) &&
    Object.entries(s.Condition ?? {}).every(([operator, block]) => conditionHolds(operator, block, context));
  const statements = policies.flatMap((p) => p.Statement);
  return !statements.some((s) => s.Effect === 'Deny' && matches(s)) && statements.some((s) => s.Effect === 'Allow' && matches(s));
}
