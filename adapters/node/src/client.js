'use strict';
// A small client of the sidecar's session API (docs/session-api.openapi.json in the
// repository). It speaks HTTP/1.1 with keep-alive over the sidecar's Unix socket or TCP port,
// the two addresses the operator and farmctl give the app.

const http = require('node:http');
const fs = require('node:fs');

/** The sidecar answered with an error; `status` and the sidecar's own message are kept. */
class SessionApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.name = 'SessionApiError';
    this.status = status;
    this.body = body;
    // 409: the table changed since it was read; `currentVersion` says to what.
    this.currentVersion = body && typeof body.current_version === 'number' ? body.current_version : undefined;
    this.code = codeOf(status);
  }
}

function codeOf(status) {
  switch (status) {
    case 409: return 'STICKYFARM_CONFLICT';
    case 413: return 'STICKYFARM_TOO_LARGE';
    case 422: return 'STICKYFARM_UNPROCESSABLE';
    case 503: return 'STICKYFARM_UNAVAILABLE';
    default: return 'STICKYFARM_API_ERROR';
  }
}

/** The sidecar could not be reached at all (not started, stopped, wrong address). */
class SidecarUnreachableError extends Error {
  constructor(where, cause) {
    super(`the Stickyfarm sidecar's session API at ${where} is unreachable (${cause.code || cause.message}); ` +
      'is the sidecar running, and does STICKYFARM_API_SOCKET or STICKYFARM_API_URL name it?');
    this.name = 'SidecarUnreachableError';
    this.code = 'STICKYFARM_UNREACHABLE';
    this.cause = cause;
  }
}

/**
 * Where the session API is: `{ socketPath }` or `{ url }` from the options, else from the
 * environment the operator sets (STICKYFARM_API_SOCKET when the socket exists, else
 * STICKYFARM_API_URL).
 */
function resolveAddress(options = {}, env = process.env) {
  if (options.socketPath) return { socketPath: options.socketPath };
  if (options.url) return { url: new URL(options.url) };
  if (env.STICKYFARM_API_SOCKET && fs.existsSync(env.STICKYFARM_API_SOCKET)) {
    return { socketPath: env.STICKYFARM_API_SOCKET };
  }
  if (env.STICKYFARM_API_URL) return { url: new URL(env.STICKYFARM_API_URL) };
  throw new Error('no Stickyfarm session API configured: pass { url } or { socketPath }, ' +
    'or run the app beside the sidecar, which sets STICKYFARM_API_URL');
}

const ID = /^[A-Za-z0-9_-]{1,64}$/;
function segment(what, value) {
  // Ids and table names never need escaping; anything else is a caller's bug, refused before
  // it can turn into another path.
  if (typeof value !== 'string' || !ID.test(value)) {
    throw new TypeError(`invalid ${what} ${JSON.stringify(value)}: expected [A-Za-z0-9_-]{1,64}`);
  }
  return value;
}

class SessionApiClient {
  constructor(options = {}) {
    this.address = resolveAddress(options, options.env);
    this.where = this.address.socketPath ? `unix:${this.address.socketPath}` : this.address.url.origin;
    this.timeoutMs = options.timeoutMs ?? 5000;
    this.agent = new http.Agent({ keepAlive: true, maxSockets: options.maxSockets ?? 64 });
  }

  /** The whole session: `{ id, generation, tables: { name: { version, doc } } }`, or null. */
  async getSession(id, headers) {
    const r = await this.request('GET', `/v1/sessions/${segment('session id', id)}`, undefined, headers);
    if (r.status === 404) return null;
    return expect(r, 200);
  }

  /** One table: `{ version, value }`, or null when it (or the session) does not exist. */
  async getTable(id, table, headers) {
    const r = await this.request('GET', tablePath(id, table), undefined, headers);
    if (r.status === 404) return null;
    const value = expect(r, 200);
    return { version: Number(String(r.headers.etag).replace(/"/g, '')), value };
  }

  /**
   * Writes a table through to PostgreSQL. `ifMatch`: the version it was based on (0: must not
   * exist yet), `'*'` for any, undefined for "the version this unit cached". Resolves to the
   * write's acknowledgement `{ version, generation }`; a conflict rejects with a
   * SessionApiError of status 409.
   */
  async putTable(id, table, value, { ifMatch, headers } = {}) {
    const h = { 'content-type': 'application/json', ...headers };
    if (ifMatch !== undefined) h['if-match'] = ifMatch === '*' ? '*' : `"${ifMatch}"`;
    const r = await this.request('PUT', tablePath(id, table), JSON.stringify(value), h);
    return expect(r, 200, 201);
  }

  async deleteTable(id, table, { ifMatch, headers } = {}) {
    const h = { ...headers };
    if (ifMatch !== undefined) h['if-match'] = ifMatch === '*' ? '*' : `"${ifMatch}"`;
    const r = await this.request('DELETE', tablePath(id, table), undefined, h);
    if (r.status === 404) return false;
    expect(r, 204);
    return true;
  }

  /** Deletes the session on every unit (logout). False when it did not exist. */
  async deleteSession(id, headers) {
    const r = await this.request('DELETE', `/v1/sessions/${segment('session id', id)}`, undefined, headers);
    if (r.status === 404) return false;
    expect(r, 204);
    return true;
  }

  /** Moves the session to a new id (sign-in, sign-out); resolves to the new id. */
  async rotate(id, headers) {
    const r = await this.request('POST', `/v1/sessions/${segment('session id', id)}/rotate`, undefined, headers);
    return expect(r, 200).id;
  }

  close() {
    this.agent.destroy();
  }

  request(method, path, body, headers = {}) {
    const target = this.address.socketPath
      ? { socketPath: this.address.socketPath, host: 'localhost' }
      : { host: this.address.url.hostname, port: this.address.url.port || 80 };
    const h = { ...headers };
    if (body !== undefined) h['content-length'] = Buffer.byteLength(body);
    return new Promise((resolve, reject) => {
      const req = http.request({ ...target, method, path, headers: h, agent: this.agent }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', (e) => reject(new SidecarUnreachableError(this.where, e)));
      });
      req.setTimeout(this.timeoutMs, () => req.destroy(Object.assign(new Error(`no answer within ${this.timeoutMs} ms`), { code: 'ETIMEDOUT' })));
      req.on('error', (e) => reject(new SidecarUnreachableError(this.where, e)));
      req.end(body);
    });
  }
}

function tablePath(id, table) {
  return `/v1/sessions/${segment('session id', id)}/tables/${segment('table name', table)}`;
}

function expect(r, ...ok) {
  let body;
  try {
    body = r.text ? JSON.parse(r.text) : undefined;
  } catch {
    body = undefined;
  }
  if (ok.includes(r.status)) return body;
  const message = body && body.error ? body.error : `HTTP ${r.status}`;
  throw new SessionApiError(r.status, `the session API refused the request (${r.status}): ${message}`, body);
}

module.exports = { SessionApiClient, SessionApiError, SidecarUnreachableError, resolveAddress };
