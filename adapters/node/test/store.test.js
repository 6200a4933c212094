'use strict';
// The express-session store against real sidecars on a real PostgreSQL (adapters/test).

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { startSidecar, freePort, browser, sleep } = require('./harness');
const { makeApp, listen } = require('./app');
const { SessionApiClient, StickyfarmStore, SidecarUnreachableError } = require('..');

const stops = [];
after(async () => {
  for (const stop of stops.reverse()) await stop();
});

/** A unit: the test app with the store on its sidecar's API, and the sidecar in front. */
async function unit(name, { api = 'tcp', sidecarArgs = [], ports } = {}) {
  const p = ports || { public: await freePort(), api: await freePort(), admin: await freePort() };
  const socketPath = require('node:path').join(require('./harness').dir, `${name}.sock`);
  const storeOptions = api === 'socket' ? { socketPath } : { url: `http://127.0.0.1:${p.api}` };
  const app = await listen(makeApp(storeOptions));
  const sidecar = await startSidecar({ unit: name, appPort: app.port, ports: p, args: sidecarArgs });
  const u = { name, app, sidecar, url: sidecar.publicUrl, api: new SessionApiClient({ url: sidecar.apiUrl }) };
  stops.push(async () => { u.api.close(); await u.sidecar.kill(); await app.close(); });
  return u;
}

const json = async (r) => ({ status: r.status, body: await r.json() });

test('a session is created, read, updated and destroyed through express-session', async () => {
  const a = await unit('crud-a');
  const b = browser();
  const first = await json(await b.request(`${a.url}/visit`));
  assert.equal(first.status, 200);
  assert.equal(first.body.visits, 1);
  assert.equal(first.body.unit, 'crud-a');
  const second = await json(await b.request(`${a.url}/visit`));
  assert.equal(second.body.visits, 2);
  assert.equal(second.body.id, first.body.id, 'the sidecar\'s id is the session id');
  // What the sidecar holds: the express document in its own table, version 2.
  const t = await a.api.getTable(first.body.id, 'express');
  assert.equal(t.version, 2);
  assert.equal(t.value.visits, 2);
  const out = await b.request(`${a.url}/logout`, { method: 'POST' });
  assert.equal(out.status, 200);
  assert.equal(await a.api.getSession(first.body.id), null, 'destroyed on the sidecar');
  const again = await json(await b.request(`${a.url}/visit`));
  assert.equal(again.body.visits, 1, 'a new session after logout');
  assert.notEqual(again.body.id, first.body.id);
});

test('two requests writing one session at once: different keys merge, the same key is refused', async () => {
  const a = await unit('race-a');
  const b = browser();
  await b.request(`${a.url}/visit`);
  const [x, y] = await Promise.all([
    b.request(`${a.url}/set?key=colour&value=red&delay=300`, { method: 'POST' }),
    b.request(`${a.url}/set?key=size&value=L&delay=300`, { method: 'POST' }),
  ]);
  assert.deepEqual([x.status, y.status], [200, 200]);
  const both = (await json(await b.request(`${a.url}/whoami`))).body;
  assert.equal(both.colour, 'red');
  assert.equal(both.size, 'L', 'neither write lost the other');

  const [p, q] = await Promise.all([
    b.request(`${a.url}/set?key=colour&value=green&delay=300`, { method: 'POST' }),
    b.request(`${a.url}/set?key=colour&value=blue&delay=300`, { method: 'POST' }),
  ]);
  const statuses = [p.status, q.status].sort();
  assert.deepEqual(statuses, [200, 409], 'one wins, the other is told');
  const refused = p.status === 409 ? await p.json() : await q.json();
  assert.equal(refused.code, 'STICKYFARM_CONFLICT');
  assert.match(refused.error, /changed by another request/);
  const winner = p.status === 200 ? 'green' : 'blue';
  assert.equal((await json(await b.request(`${a.url}/whoami`))).body.colour, winner);
});

test('sign-in regenerates the session: the sidecar rotates the id and reissues the cookie', async () => {
  const a = await unit('rotate-a');
  const b = browser();
  const before = (await json(await b.request(`${a.url}/visit`))).body.id;
  const cookiesBefore = new Map(b.jar);
  const login = await json(await b.request(`${a.url}/login?user=ada`, { method: 'POST' }));
  assert.equal(login.status, 200);
  assert.notEqual(login.body.id, before);
  assert.notDeepEqual(new Map(b.jar), cookiesBefore, 'the cookie was reissued');
  assert.equal(await a.api.getSession(before), null, 'the old id is dead');
  const me = (await json(await b.request(`${a.url}/whoami`))).body;
  assert.equal(me.id, login.body.id);
  assert.equal(me.user, 'ada');
  assert.equal(me.visits, undefined, 'regenerate starts an empty express session');
});

test('a session idle for longer than the farm allows is gone', async () => {
  const a = await unit('expiry-a', { sidecarArgs: ['--idle-timeout', '2s'] });
  const b = browser();
  const first = (await json(await b.request(`${a.url}/visit`))).body;
  assert.equal((await json(await b.request(`${a.url}/visit`))).body.visits, 2);
  await sleep(3500);
  const later = (await json(await b.request(`${a.url}/visit`))).body;
  assert.equal(later.visits, 1, 'the expired session is not served');
  assert.equal(await a.api.getSession(first.id), null);
});

test('the state survives the sidecar restarting, and another unit serves it after the first stopped', async () => {
  const a = await unit('restart-a');
  const b = browser();
  const id = (await json(await b.request(`${a.url}/visit`))).body.id;
  await b.request(`${a.url}/visit`);
  // The same unit's sidecar restarts (same ports, new instance id): the app's store reconnects.
  await a.sidecar.stop();
  a.sidecar = await startSidecar({ unit: 'restart-a', appPort: a.app.port, ports: a.sidecar.ports });
  const afterRestart = (await json(await b.request(`${a.url}/visit`))).body;
  assert.equal(afterRestart.visits, 3);
  assert.equal(afterRestart.id, id);

  // Another unit of the farm; the first one stops. The browser keeps its cookie.
  const other = await unit('restart-b');
  await a.sidecar.stop();
  const onB = (await json(await b.request(`${other.url}/visit`))).body;
  assert.equal(onB.unit, 'restart-b');
  assert.equal(onB.id, id, 'the same session');
  assert.equal(onB.visits, 4, 'loaded from PostgreSQL on the backup unit');
});

test('the store talks to the sidecar over its Unix socket', async () => {
  const a = await unit('socket-a', { api: 'socket' });
  const b = browser();
  assert.equal((await json(await b.request(`${a.url}/visit`))).body.visits, 1);
  const r = await json(await b.request(`${a.url}/visit`));
  assert.equal(r.body.visits, 2);
  assert.equal((await a.api.getTable(r.body.id, 'express')).value.visits, 2);
});

test('documents too large or too deep are refused with the sidecar\'s own error, nothing saved', async () => {
  const a = await unit('limits-a', { sidecarArgs: ['--max-table-size', '64KiB', '--max-json-depth', '16'] });
  const b = browser();
  const id = (await json(await b.request(`${a.url}/visit`))).body.id;
  const big = await json(await b.request(`${a.url}/big?bytes=100000`, { method: 'POST' }));
  assert.equal(big.status, 413);
  assert.equal(big.body.code, 'STICKYFARM_TOO_LARGE');
  assert.match(big.body.error, /max-table-size/);
  const deep = await json(await b.request(`${a.url}/deep?depth=40`, { method: 'POST' }));
  assert.equal(deep.status, 422);
  assert.match(deep.body.error, /deep|depth|nest/i);
  const t = await a.api.getTable(id, 'express');
  assert.equal(t.version, 1, 'the refused writes changed nothing');
  assert.equal(t.value.big, undefined);
});

test('an unreachable sidecar fails the request; it never yields an empty session', async () => {
  const port = await freePort();
  const store = new StickyfarmStore({ url: `http://127.0.0.1:${port}` });
  const got = await new Promise((resolve) => store.get('AAAAAAAAAAAAAAAAAAAAAA', (err, s) => resolve({ err, s })));
  assert.ok(got.err instanceof SidecarUnreachableError, String(got.err));
  assert.equal(got.s, undefined);
  assert.match(got.err.message, /unreachable .*STICKYFARM_API_URL/);
  store.client.close();

  // Through Express: the request fails with express's usual 500 and the error's message.
  const app = await listen(makeApp({ url: `http://127.0.0.1:${port}` }));
  stops.push(() => app.close());
  const r = await fetch(`http://127.0.0.1:${app.port}/visit`, { headers: { 'x-stickyfarm-session': 'AAAAAAAAAAAAAAAAAAAAAA' } });
  assert.equal(r.status, 500);
  assert.match((await r.json()).error, /unreachable/);
  // Reached without the sidecar at all: refused, not a fresh session.
  const direct = await fetch(`http://127.0.0.1:${app.port}/visit`);
  assert.equal(direct.status, 500);
  assert.match((await direct.json()).error, /through the Stickyfarm sidecar/);
});
