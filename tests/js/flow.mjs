// Drives tokengate with the real jsforce client (pinned to 3.10.16 in package.json).
//
// Run by tests/it/jsforce.rs; it can also be run by hand against a running tokengate:
//
//   NODE_EXTRA_CA_CERTS=/abs/path/cert.pem TG_URL=https://127.0.0.1:8443 TG_USER=alice \
//   TG_SECRET='Passw0rd<token>' TG_CLIENT_ID=... TG_CLIENT_SECRET=... node flow.mjs
//
// TLS verification stays on: tokengate's self-signed certificate is trusted through
// NODE_EXTRA_CA_CERTS. jsforce 3.10.16 sends through node-fetch v2, which uses Node's `https`
// module and therefore the default CA store that NODE_EXTRA_CA_CERTS extends. (jsforce >= 3.10.17
// switched to undici's fetch, which needs Node 22, and would need a different trust set-up.)
//
// Output: one JSON object per line on stdout, `{"step": ..., "ok": true|false, ...}`. The process
// exits non-zero if any step saw something other than what it expected.

import jsforce from 'jsforce';

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    console.log(JSON.stringify({ step: 'env', ok: false, error: `${name} is not set` }));
    process.exit(2);
  }
  return v;
};

const URL_ = env('TG_URL');
const USER = env('TG_USER');
const SECRET = env('TG_SECRET');
const CLIENT_ID = env('TG_CLIENT_ID');
const CLIENT_SECRET = env('TG_CLIENT_SECRET');
const VERSION = '59.0';
const SOQL = 'SELECT Id, Name FROM Account LIMIT 5';

let failures = 0;

function report(step, ok, fields) {
  if (!ok) failures += 1;
  console.log(JSON.stringify({ step, ok, ...fields }));
}

function check(cond, what) {
  if (!cond) throw new Error(`unexpected: ${what}`);
}

function errorFields(e) {
  return { errorName: e?.name, errorCode: e?.errorCode, error: e?.message ?? String(e) };
}

/** Runs one step; a thrown error marks it failed. */
async function step(name, fn) {
  try {
    report(name, true, (await fn()) ?? {});
  } catch (e) {
    report(name, false, { ...errorFields(e), stack: e?.stack });
  }
}

/** Runs one step that must be rejected; `expect` checks the rejection. */
async function mustReject(name, fn, expect) {
  let value;
  try {
    value = await fn();
  } catch (e) {
    const fields = errorFields(e);
    try {
      expect(e);
      report(name, true, fields);
    } catch (why) {
      report(name, false, { ...fields, why: why.message });
    }
    return;
  }
  report(name, false, { why: 'expected a rejection, got success', value });
}

function checkQuery(res) {
  check(res && res.totalSize === 1 && res.done === true, `query result ${JSON.stringify(res)}`);
  check(Array.isArray(res.records) && res.records.length === 1, 'one record');
  check(res.records[0].Id === '001000000000001AAA' && res.records[0].Name === 'Acme', 'the Acme record');
  return { totalSize: res.totalSize, done: res.done, records: res.records.map((r) => ({ Id: r.Id, Name: r.Name })) };
}

/** A connection that reuses `accessToken` and has no way to log in again. */
function staleConnection(instanceUrl, accessToken) {
  return new jsforce.Connection({ instanceUrl, accessToken, version: VERSION });
}

function expectInvalidSession(e) {
  check(e.errorCode === 'INVALID_SESSION_ID', `errorCode INVALID_SESSION_ID, got ${e.errorCode}`);
}

// ---- A) SOAP login() ------------------------------------------------------------------------
{
  const conn = new jsforce.Connection({ loginUrl: URL_, version: VERSION });
  let token;
  let instanceUrl;
  await step('soap.login', async () => {
    const userInfo = await conn.login(USER, SECRET);
    check(conn.instanceUrl === URL_, `instanceUrl ${conn.instanceUrl} (want ${URL_})`);
    check(/^005\w{15}$/.test(userInfo.id), `user id ${userInfo.id}`);
    check(/^00D\w{15}$/.test(userInfo.organizationId), `org id ${userInfo.organizationId}`);
    check(userInfo.url === `${URL_}/id/${userInfo.organizationId}/${userInfo.id}`, `identity url ${userInfo.url}`);
    check(typeof conn.accessToken === 'string' && conn.accessToken.length > 0, 'a session id');
    token = conn.accessToken;
    instanceUrl = conn.instanceUrl;
    return { instanceUrl: conn.instanceUrl, userInfo };
  });
  if (token) {
    await step('soap.query', async () => checkQuery(await conn.query(SOQL)));
    await step('soap.logout', async () => {
      await conn.logout();
      check(!conn.accessToken, 'the connection forgot its session');
      return {};
    });
    // The session the SOAP logout ended must no longer work (401 INVALID_SESSION_ID).
    await mustReject('soap.session_dead_after_logout', () => staleConnection(instanceUrl, token).query(SOQL), expectInvalidSession);
  }
}

// ---- B) OAuth 2.0 username-password grant ---------------------------------------------------
{
  const conn = new jsforce.Connection({
    loginUrl: URL_,
    version: VERSION,
    oauth2: { loginUrl: URL_, clientId: CLIENT_ID, clientSecret: CLIENT_SECRET },
  });
  let token;
  let instanceUrl;
  let loginInfo;
  await step('oauth.login', async () => {
    loginInfo = await conn.login(USER, SECRET);
    check(conn.instanceUrl === URL_, `instanceUrl ${conn.instanceUrl} (want ${URL_})`);
    check(/^005\w{15}$/.test(loginInfo.id), `user id ${loginInfo.id}`);
    check(/^00D\w{15}$/.test(loginInfo.organizationId), `org id ${loginInfo.organizationId}`);
    check(loginInfo.url === `${URL_}/id/${loginInfo.organizationId}/${loginInfo.id}`, `identity url ${loginInfo.url}`);
    token = conn.accessToken;
    instanceUrl = conn.instanceUrl;
    return { instanceUrl: conn.instanceUrl, userInfo: loginInfo };
  });
  if (token) {
    await step('oauth.query', async () => checkQuery(await conn.query(SOQL)));
    await step('oauth.identity', async () => {
      const id = await conn.identity();
      check(id.user_id === loginInfo.id, `identity user_id ${id.user_id} (want ${loginInfo.id})`);
      check(id.organization_id === loginInfo.organizationId, `identity organization_id ${id.organization_id}`);
      check(id.id === loginInfo.url, `identity id ${id.id}`);
      check(typeof id.username === 'string' && id.username.toLowerCase() === USER.toLowerCase(), `identity username ${id.username}`);
      return { user_id: id.user_id, organization_id: id.organization_id, id: id.id, username: id.username };
    });
    await step('oauth.logout', async () => {
      await conn.logout();
      check(!conn.accessToken, 'the connection forgot its token');
      return {};
    });
    await mustReject('oauth.token_dead_after_revoke', () => staleConnection(instanceUrl, token).query(SOQL), expectInvalidSession);
  }
}

// ---- D) refresh tokens (the client has refresh_tokens = true) --------------------------------
// jsforce's `login()` drops the password grant's refresh_token, so the token comes from
// OAuth2.authenticate() itself. tokengate rotates refresh tokens: jsforce's automatic refresh
// (on a 401 INVALID_SESSION_ID) does not keep the new one, so the application keeps it from the
// `refresh` event, as a rotating server requires.
{
  const oauth2 = new jsforce.OAuth2({ loginUrl: URL_, clientId: CLIENT_ID, clientSecret: CLIENT_SECRET });
  let first;
  let second;
  await step('refresh.login', async () => {
    first = await oauth2.authenticate(USER, SECRET);
    check(typeof first.refresh_token === 'string' && first.refresh_token.length > 0, 'a refresh_token');
    check(first.scope === 'refresh_token api', `scope ${first.scope}`);
    return {};
  });
  await step('refresh.rotate', async () => {
    second = await oauth2.refreshToken(first.refresh_token);
    check(typeof second.access_token === 'string' && second.access_token !== first.access_token, 'a new access token');
    check(typeof second.refresh_token === 'string' && second.refresh_token !== first.refresh_token, 'a new refresh token');
    check(second.instance_url === URL_, `instance_url ${second.instance_url}`);
    return checkQuery(await staleConnection(second.instance_url, second.access_token).query(SOQL));
  });
  let conn;
  await step('refresh.automatic', async () => {
    conn = new jsforce.Connection({
      oauth2: { loginUrl: URL_, clientId: CLIENT_ID, clientSecret: CLIENT_SECRET },
      instanceUrl: second.instance_url,
      accessToken: second.access_token,
      refreshToken: second.refresh_token,
      version: VERSION,
    });
    const refreshed = [];
    conn.on('refresh', (accessToken, res) => {
      refreshed.push(accessToken);
      conn.refreshToken = res.refresh_token;
    });
    // The session ends; the next call gets 401 INVALID_SESSION_ID and jsforce refreshes.
    await oauth2.revokeToken(second.access_token);
    const res = checkQuery(await conn.query(SOQL));
    check(refreshed.length === 1, `refreshed ${refreshed.length} times`);
    check(conn.accessToken === refreshed[0] && conn.accessToken !== second.access_token, 'the new access token in use');
    check(conn.refreshToken !== second.refresh_token, 'the rotated refresh token kept');
    return res;
  });
  const expectExpired = (e) =>
    check(e.name === 'invalid_grant' && e.message === 'expired access/refresh token', `${e.name}: ${e.message}`);
  // A used refresh token again: refused, and its whole family ends with it.
  await mustReject('refresh.reuse_refused', () => oauth2.refreshToken(first.refresh_token), expectExpired);
  await mustReject('refresh.family_revoked', () => oauth2.refreshToken(conn.refreshToken), expectExpired);
}

// ---- C) wrong password ----------------------------------------------------------------------
await mustReject(
  'soap.wrong_password',
  () => new jsforce.Connection({ loginUrl: URL_, version: VERSION }).login(USER, `wrong${SECRET}`),
  (e) => check(e.message.startsWith('INVALID_LOGIN: '), `message ${e.message}`),
);
await mustReject(
  'oauth.wrong_password',
  () =>
    new jsforce.Connection({
      loginUrl: URL_,
      version: VERSION,
      oauth2: { loginUrl: URL_, clientId: CLIENT_ID, clientSecret: CLIENT_SECRET },
    }).login(USER, `wrong${SECRET}`),
  (e) => check(e.name === 'invalid_grant' && e.message === 'authentication failure', `${e.name}: ${e.message}`),
);

console.log(JSON.stringify({ step: 'done', ok: failures === 0, failures }));
process.exit(failures === 0 ? 0 : 1);
