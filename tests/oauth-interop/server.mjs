// Starts oauth2-mock-server (a third-party OAuth 2.0 / OIDC server) for the interop test of
// KlaviyoOAuth and prints `OAUTH_INTEROP_URL=<issuer>` once it listens.
//
// Environment: PORT (0 = any free port), OAUTH_INTEROP_CLIENT_ID, OAUTH_INTEROP_CLIENT_SECRET.
//
// What the library itself verifies: the authorize request (response_type=code, the S256
// code_challenge) and, at the token endpoint, that the code_verifier matches the challenge
// (RFC 7636; a mismatch is 400 invalid_request). It does not check client credentials,
// redirect_uri or refresh tokens, so this launcher adds those checks through the library's
// documented `beforeAuthorizeRedirect` / `beforeResponse` hooks, with the `basic-auth`
// package parsing the Authorization header: client_secret_basic (401 invalid_client), a code
// used once with the redirect_uri it was issued for, and refresh tokens that it issued and that
// were not rotated away (400 invalid_grant).
import basicAuth from 'basic-auth';
import { OAuth2Server } from 'oauth2-mock-server';

const clientId = process.env.OAUTH_INTEROP_CLIENT_ID ?? 'interop-client';
const clientSecret = process.env.OAUTH_INTEROP_CLIENT_SECRET ?? 'interop-secret';
const port = Number(process.env.PORT ?? 0);

const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');

const codes = new Map(); // code → redirect_uri it was issued for
const liveRefreshTokens = new Set();

server.service.on('beforeAuthorizeRedirect', ({ url }, req) => {
  const code = url.searchParams.get('code');
  if (code) codes.set(code, req.query.redirect_uri);
});

server.service.on('beforeResponse', (response, req) => {
  const fail = (statusCode, error, description) => {
    response.statusCode = statusCode;
    response.body = { error, error_description: description };
  };
  const credentials = basicAuth(req);
  if (!credentials || credentials.name !== clientId || credentials.pass !== clientSecret) {
    return fail(401, 'invalid_client', 'client_secret_basic authentication failed');
  }
  const body = req.body;
  if (body.grant_type === 'authorization_code') {
    const redirectUri = codes.get(body.code);
    codes.delete(body.code);
    if (redirectUri === undefined) return fail(400, 'invalid_grant', 'unknown or used code');
    if (body.redirect_uri !== redirectUri) return fail(400, 'invalid_grant', 'redirect_uri mismatch');
  } else if (body.grant_type === 'refresh_token') {
    if (!liveRefreshTokens.delete(body.refresh_token)) {
      return fail(400, 'invalid_grant', 'unknown or rotated refresh token');
    }
  }
  if (response.body.refresh_token) liveRefreshTokens.add(response.body.refresh_token);
});

await server.start(port, '127.0.0.1');
console.log(`OAUTH_INTEROP_URL=http://127.0.0.1:${server.address().port}`);

const stop = async () => {
  await server.stop();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
