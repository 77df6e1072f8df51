/**
 * Token scopes: parsing what clients send (repeatable `scope`, space-separated in the OAuth2 form, resource
 * classes refused) and granting requested ∩ allowed by the same name resolution the registry uses (mirror
 * names, the default rule, Docker Hub's `library/`).
 */
import { describe, expect, it } from 'vitest';
import { canonicalForms, grantAccess, MAX_SCOPES, parseScopes, type NameResolution } from '../../shared/auth/scopes.js';
import { parseConfig } from '../../shared/config.js';
import { createMirrorNames, createRuleResolver } from '../../shared/registry/rules.js';

function names(defaultRule?: string): NameResolution {
  const config = parseConfig({
    rules: [
      { prefix: 'local', upstream: 'http://127.0.0.1:5055' },
      { prefix: 'docker-hub', upstream: 'https://registry-1.docker.io' },
      { prefix: 'ghcr', upstream: 'https://ghcr.io' },
    ],
    defaultRule,
  });
  return { prefixes: config.rules.map((r) => r.prefix), mirrorName: createMirrorNames(config.rules, config.defaultRule), resolve: createRuleResolver(config.rules) };
}

const pull = (name: string) => ({ type: 'repository', name, actions: ['pull'] });

describe('parseScopes', () => {
  it.each([
    ['one repository scope', ['repository:local/app:pull'], [pull('local/app')]],
    ['several actions, duplicates dropped', ['repository:local/app:pull,push,pull'], [{ type: 'repository', name: 'local/app', actions: ['pull', 'push'] }]],
    ['two scope parameters (containerd)', ['repository:local/a:pull', 'repository:ghcr/b/c:pull'], [pull('local/a'), pull('ghcr/b/c')]],
    ['space-separated in one value (OAuth2 form)', ['repository:local/a:pull repository:local/b:pull'], [pull('local/a'), pull('local/b')]],
    ['the name is between the first and the last colon', ['repository:localhost:5000/x:pull'], [pull('localhost:5000/x')]],
    ['the catalog scope', ['registry:catalog:*'], [{ type: 'registry', name: 'catalog', actions: ['*'] }]],
    ['a resource class is refused', ['repository(plugin):local/app:pull'], []],
    ['no actions', ['repository:local/app:'], []],
    ['no name', ['repository::pull'], []],
    ['no colon at all', ['garbage'], []],
    ['an empty value', [''], []],
    ['a type with odd characters', ['Repo-sitory:local/app:pull'], []],
  ])('%s', (_label, values, expected) => {
    expect(parseScopes(values)).toEqual(expected);
  });

  it(`reads at most ${MAX_SCOPES} scopes`, () => {
    const many = Array.from({ length: MAX_SCOPES + 5 }, (_, i) => `repository:local/app${i}:pull`);
    expect(parseScopes(many)).toHaveLength(MAX_SCOPES);
  });
});

describe('canonicalForms', () => {
  it.each([
    ['a prefixed name is itself, and under each rule for an ns mirror', undefined, 'local/app', ['local/app', 'local/local/app', 'docker-hub/local/app', 'ghcr/local/app']],
    ['Docker Hub one-part names get library/', undefined, 'docker-hub/alpine', ['docker-hub/library/alpine', 'local/docker-hub/alpine', 'docker-hub/docker-hub/alpine', 'ghcr/docker-hub/alpine']],
    ['a bare name without a default rule exists only as an ns mirror name', undefined, 'library/nginx', ['local/library/nginx', 'docker-hub/library/nginx', 'ghcr/library/nginx']],
    ['a bare name with a default rule', 'docker-hub', 'nginx', ['docker-hub/library/nginx', 'local/nginx', 'ghcr/nginx']],
    ['an invalid name has none', undefined, 'Local/App', []],
  ])('%s', (_label, defaultRule, name, expected) => {
    expect(canonicalForms(names(defaultRule), name).map((f) => f.name).sort()).toEqual([...expected].sort());
  });
});

describe('grantAccess: requested ∩ allowed, pull only', () => {
  it.each([
    ['a user of local pulls local', ['local'], ['repository:local/app:pull'], [pull('local/app'), pull('local/local/app')]],
    ['push is never granted', ['local'], ['repository:local/app:push'], []],
    ['pull,push grants pull only', ['local'], ['repository:local/app:pull,push'], [pull('local/app'), pull('local/local/app')]],
    ['a user of local gets no Docker Hub name, only the local ns form', ['local'], ['repository:docker-hub/alpine:pull'], [pull('local/docker-hub/alpine')]],
    ['a user of docker-hub gets the canonical library/ name', ['docker-hub'], ['repository:docker-hub/alpine:pull'], [pull('docker-hub/library/alpine'), pull('docker-hub/docker-hub/alpine')]],
    ['* pulls every form', ['*'], ['repository:ghcr/o/i:pull'], [pull('ghcr/o/i'), pull('local/ghcr/o/i'), pull('docker-hub/ghcr/o/i'), pull('ghcr/ghcr/o/i')]],
    ['two scopes, one allowed', ['ghcr'], ['repository:ghcr/o/i:pull', 'repository:local/app:pull'], [pull('ghcr/o/i'), pull('ghcr/ghcr/o/i'), pull('ghcr/local/app')]],
    ['the catalog only for *', ['*'], ['registry:catalog:*'], [{ type: 'registry', name: 'catalog', actions: ['*'] }]],
    ['no catalog for a prefix list', ['local', 'ghcr'], ['registry:catalog:*'], []],
    ['a resource class grants nothing', ['*'], ['repository(plugin):local/app:pull'], []],
    ['no scopes (docker login): empty access', ['*'], [], []],
  ])('%s', (_label, prefixes, scopes, expected) => {
    expect(grantAccess(parseScopes(scopes), { prefixes }, names())).toEqual(expected);
  });

  it('mirror names: a bare name under the default rule, for a user of that rule only', () => {
    const n = names('docker-hub');
    expect(grantAccess(parseScopes(['repository:library/nginx:pull']), { prefixes: ['docker-hub'] }, n)).toEqual([pull('docker-hub/library/nginx')]);
    expect(grantAccess(parseScopes(['repository:library/nginx:pull']), { prefixes: ['ghcr'] }, n)).toEqual([pull('ghcr/library/nginx')]);
  });
});
