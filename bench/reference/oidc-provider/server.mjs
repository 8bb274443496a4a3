// Reference OAuth server for bench/tokens.py: node oidc-provider, in-memory adapter,
// refresh tokens rotated on every use, ES256 JWT access tokens for one resource server.
//
//   BENCH_PORT=8123 BENCH_WORKERS=2 node server.mjs
//
// The in-memory adapter is per process, so each worker keeps its own tokens: the load
// generator holds one keep-alive connection per chain and asks GET /bench/seed on that
// connection for a refresh token that lives in the worker serving it. That route is bench
// setup only (it mints a grant and a refresh token as a finished code flow would), never timed.
import cluster from 'node:cluster';
import crypto from 'node:crypto';
import http from 'node:http';

import Provider from 'oidc-provider';

const PORT = Number(process.env.BENCH_PORT || 8123);
const WORKERS = Number(process.env.BENCH_WORKERS || 2);
const ISSUER = `http://127.0.0.1:${PORT}`;
const CLIENT_ID = 'bench-app';
const RESOURCE = 'https://labo-bench.example/fhir';
const SCOPE = 'lab_results';
const DAY = 24 * 60 * 60;

if (cluster.isPrimary && WORKERS > 1) {
  // One signing key for every worker, as one issuer would have.
  const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'bench-es256', use: 'sig', alg: 'ES256' };
  for (let i = 0; i < WORKERS; i += 1) {
    cluster.fork({ BENCH_JWK: JSON.stringify(jwk) });
  }
  cluster.on('exit', (worker, code) => {
    if (code !== 0) console.error(`worker ${worker.process.pid} exited with ${code}`);
  });
  const stop = () => {
    for (const worker of Object.values(cluster.workers)) worker.kill('SIGTERM');
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  let jwk;
  if (process.env.BENCH_JWK) {
    jwk = JSON.parse(process.env.BENCH_JWK);
  } else {
    const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'bench-es256', use: 'sig', alg: 'ES256' };
  }

  const provider = new Provider(ISSUER, {
    clients: [{
      client_id: CLIENT_ID,
      token_endpoint_auth_method: 'none', // a public client, as the broker's bench app
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: ['https://app.example/callback'],
      id_token_signed_response_alg: 'ES256', // the only key is EC (no ID token is issued here)
    }],
    jwks: { keys: [jwk] },
    rotateRefreshToken: true, // every use rotates; a reused one revokes its grant
    ttl: {
      AccessToken: 300,
      RefreshToken: 14 * DAY,
      Grant: 14 * DAY,
      Session: DAY,
      Interaction: 3600,
      AuthorizationCode: 60,
      IdToken: 3600,
    },
    features: {
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => RESOURCE,
        useGrantedResource: async () => true,
        getResourceServerInfo: async () => ({
          scope: SCOPE,
          audience: RESOURCE,
          accessTokenTTL: 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        }),
      },
    },
    findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  });
  provider.on('server_error', (ctx, err) => console.error('server_error', err));

  async function seed() {
    const client = await provider.Client.find(CLIENT_ID);
    const accountId = `patient-${crypto.randomUUID()}`;
    const grant = new provider.Grant({ accountId, clientId: CLIENT_ID });
    grant.addResourceScope(RESOURCE, SCOPE);
    const grantId = await grant.save();
    const token = new provider.RefreshToken({
      client,
      accountId,
      grantId,
      gty: 'authorization_code',
      scope: SCOPE,
      resource: RESOURCE,
    });
    return token.save();
  }

  const callback = provider.callback();
  http.createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/bench/seed') {
      seed().then((refreshToken) => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ refresh_token: refreshToken, pid: process.pid }));
      }, (err) => {
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(String(err && (err.error_description || err.stack)));
      });
      return;
    }
    callback(req, res);
  }).listen(PORT, '127.0.0.1');
}
