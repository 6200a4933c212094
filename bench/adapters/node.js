'use strict';
// The Express adapter's round trip, as express-session makes it on each request that changes
// the session: StickyfarmStore.get, then set (a write with If-Match). The peer in the same run:
// the same two calls by node's bare http module. Prints one JSON line per (mode, clients).
//   node bench/adapters/node.js API_URL PUBLIC_URL ROUND_TRIPS_PER_CLIENT CLIENTS...

const http = require('node:http');
const path = require('node:path');
const { StickyfarmStore } = require(path.join(__dirname, '../../adapters/node'));

const [api, pub, n, ...clientCounts] = process.argv.slice(2);
const perClient = Number(n);
const doc = { cart: 'x'.repeat(1000) }; // about 1 KiB

async function newSessionId() {
  const r = await fetch(`${pub}/`);
  const c = r.headers.getSetCookie().find((x) => x.startsWith('sf_session='));
  return c.split(';')[0].split('=')[1];
}

function adapterRoundTrip(store) {
  return async (sid, i) => {
    const read = await new Promise((res, rej) => store.get(sid, (e, s) => (e ? rej(e) : res(s))));
    const req = { sessionID: sid };
    const session = store.createSession(req, read || { cookie: { originalMaxAge: null } });
    session.cart = doc.cart;
    session.n = i;
    await new Promise((res, rej) => store.set(sid, session, (e) => (e ? rej(e) : res())));
  };
}

function rawRoundTrip() {
  const agent = new http.Agent({ keepAlive: true });
  const u = new URL(api);
  const call = (method, p, body, headers = {}) => new Promise((res, rej) => {
    const req = http.request({ host: u.hostname, port: u.port, method, path: p, agent, headers }, (r) => {
      const chunks = [];
      r.on('data', (c) => chunks.push(c));
      r.on('end', () => res({ status: r.statusCode, etag: r.headers.etag }));
    });
    req.on('error', rej);
    req.end(body);
  });
  return async (sid, i) => {
    const p = `/v1/sessions/${sid}/tables/raw`;
    const g = await call('GET', p);
    const version = g.status === 200 ? g.etag : '"0"';
    const body = JSON.stringify({ ...doc, n: i });
    const w = await call('PUT', p, body, { 'content-type': 'application/json', 'if-match': version, 'content-length': Buffer.byteLength(body) });
    if (w.status !== 200 && w.status !== 201) throw new Error(`PUT ${w.status}`);
  };
}

async function run(mode, clients) {
  const store = new StickyfarmStore({ url: api, table: 'express' });
  const trip = mode === 'adapter' ? adapterRoundTrip(store) : rawRoundTrip();
  const ids = [];
  for (let c = 0; c < clients; c++) ids.push(await newSessionId());
  for (const sid of ids) await trip(sid, 0); // warm: the first write stores the session
  const lat = [];
  const start = process.hrtime.bigint();
  const deadline = Date.now() + 30000; // bounded in time as well as in count
  await Promise.all(ids.map(async (sid) => {
    for (let i = 1; i <= perClient && Date.now() < deadline; i++) {
      const t = process.hrtime.bigint();
      await trip(sid, i);
      lat.push(Number(process.hrtime.bigint() - t) / 1e6);
    }
  }));
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  lat.sort((a, b) => a - b);
  store.client.close();
  return { adapter: 'express (node)', mode, clients, round_trips: lat.length, seconds: +seconds.toFixed(3),
    per_s: Math.round(lat.length / seconds), p50_ms: +lat[Math.floor(lat.length * 0.5)].toFixed(3),
    p99_ms: +lat[Math.floor(lat.length * 0.99)].toFixed(3) };
}

(async () => {
  for (const c of clientCounts.map(Number)) {
    for (const mode of ['adapter', 'raw']) console.log(JSON.stringify(await run(mode, c)));
  }
})().catch((e) => { console.error(e); process.exit(1); });
