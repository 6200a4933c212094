'use strict';
// Real sidecars for the tests: the `stickyfarm-sidecar` binary ($STICKYFARM_SIDECAR) on
// loopback, on the PostgreSQL database named by $DATABASE_URL (adapters/test makes a fresh one).

const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'stickyfarm-node-'));
// One session-id key for every unit of the test farm, as the operator keeps in a Secret.
const keyFile = path.join(dir, 'session-id-key');
fs.writeFileSync(keyFile, crypto.randomBytes(24).toString('hex'), { mode: 0o600 });

function required(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run the suite with adapters/test, which starts PostgreSQL and builds the sidecar`);
  return v;
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A sidecar of unit `unit` in front of the app on `appPort`. */
async function startSidecar({ unit, appPort, ports, args = [] }) {
  const p = ports || { public: await freePort(), api: await freePort(), admin: await freePort() };
  const socketPath = path.join(dir, `${unit}.sock`);
  const logPath = path.join(dir, `${unit}.log`);
  const log = fs.openSync(logPath, 'a');
  const child = spawn(required('STICKYFARM_SIDECAR'), [
    '--listen', `127.0.0.1:${p.public}`,
    '--api-listen', `127.0.0.1:${p.api}`,
    '--api-socket', socketPath,
    '--admin-listen', `127.0.0.1:${p.admin}`,
    '--app-url', `http://127.0.0.1:${appPort}`,
    '--unit', unit,
    '--pod-uid', crypto.randomUUID(),
    '--session-id-key-file', keyFile,
    '--shutdown-grace', '2s',
    ...args,
  ], { env: { PATH: process.env.PATH, DATABASE_URL: required('DATABASE_URL') }, stdio: ['ignore', log, log] });
  fs.closeSync(log);
  const exited = new Promise((r) => child.once('exit', r));
  const sidecar = {
    unit, ports: p, socketPath, child,
    publicUrl: `http://127.0.0.1:${p.public}`,
    apiUrl: `http://127.0.0.1:${p.api}`,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
  const deadline = Date.now() + 20000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`sidecar ${unit} exited: ${fs.readFileSync(logPath, 'utf8')}`);
    try {
      const r = await fetch(`${sidecar.publicUrl}/_stickyfarm/health`);
      if (r.status === 200) return sidecar;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) {
      await sidecar.kill();
      throw new Error(`sidecar ${unit} not healthy within 20 s: ${fs.readFileSync(logPath, 'utf8')}`);
    }
    await sleep(50);
  }
}

/** A client with a cookie jar, as a browser would keep one. */
function browser() {
  const jar = new Map();
  return {
    jar,
    async request(url, init = {}) {
      const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
      const r = await fetch(url, { ...init, redirect: 'manual', headers: { ...(init.headers || {}), ...(cookie ? { cookie } : {}) } });
      for (const c of r.headers.getSetCookie()) {
        const [pair] = c.split(';');
        const i = pair.indexOf('=');
        jar.set(pair.slice(0, i).trim(), pair.slice(i + 1).trim());
      }
      return r;
    },
  };
}

module.exports = { startSidecar, freePort, browser, sleep, dir };
