'use strict';
// An express-session Store whose sessions live in the unit's Stickyfarm sidecar: its cache,
// written through to PostgreSQL, served by a backup unit when this one fails.
//
// The session id is the sidecar's (it owns the cookie; `stickyfarmSession()` makes
// express-session use it), the session document is one table (`express` by default), and
// every write names the version it was based on: a write that lost a race is merged key by
// key or refused (src/merge.js), never silently dropped.

const { Store } = require('express-session');
const { SessionApiClient } = require('./client');
const { mergeSession } = require('./merge');

// What a read saw, kept on the request between express-session's get and set.
const READ = Symbol('stickyfarm.read');
// Attached (not enumerable) to the document `get` returns, picked up by `createSession`.
const VERSION = Symbol('stickyfarm.version');
const BASE = Symbol('stickyfarm.base');

const DEFAULT_COOKIE = { originalMaxAge: null, httpOnly: true, path: '/' };

class StickyfarmStore extends Store {
  /**
   * options: `client` (a SessionApiClient) or its options (`url`, `socketPath`; default: the
   * environment), `table` (default `express`), `retries` on a conflict (default 3).
   */
  constructor(options = {}) {
    super();
    this.client = options.client || new SessionApiClient(options);
    this.table = options.table || 'express';
    this.retries = options.retries ?? 3;
  }

  get(sid, cb) {
    this.client.getTable(sid, this.table).then((t) => {
      if (!t) return cb(null, null);
      const doc = t.value && typeof t.value === 'object' && !Array.isArray(t.value) ? t.value : {};
      const base = structuredClone(doc);
      if (!doc.cookie) doc.cookie = { ...DEFAULT_COOKIE };
      Object.defineProperty(doc, VERSION, { value: t.version });
      Object.defineProperty(doc, BASE, { value: base });
      cb(null, doc);
    }, cb);
  }

  createSession(req, doc) {
    req[READ] = { sid: req.sessionID, version: doc[VERSION] ?? 0, base: doc[BASE] ?? null };
    return super.createSession(req, doc);
  }

  set(sid, session, cb) {
    const req = session.req;
    const read = req && req[READ] && req[READ].sid === sid ? req[READ] : { sid, version: 0, base: null };
    const doc = JSON.parse(JSON.stringify(session));
    this.write(sid, doc, read).then((ack) => {
      if (req) req[READ] = { sid, version: ack.version, base: doc };
      cb(null);
    }, cb);
  }

  // The write, then on 409 a bounded number of merges onto what the table holds now.
  async write(sid, doc, read) {
    let { version, base } = read;
    let attempt = doc;
    for (let i = 0; ; i++) {
      try {
        return await this.client.putTable(sid, this.table, attempt, { ifMatch: version });
      } catch (e) {
        if (e.status !== 409 || i >= this.retries) throw e;
        const current = await this.client.getTable(sid, this.table);
        attempt = mergeSession(base, doc, current && current.value, ['cookie']);
        version = current ? current.version : 0;
        base = current ? current.value : null;
        doc = attempt;
      }
    }
  }

  destroy(sid, cb) {
    this.client.deleteSession(sid).then(() => cb && cb(null), (e) => cb && cb(e));
  }

  // A read is a use: the sidecar refreshes the session's idle clock (the farm's idle timeout
  // rules, not the cookie's maxAge).
  touch(sid, _session, cb) {
    this.client.getTable(sid, this.table).then(() => cb && cb(null), (e) => cb && cb(e));
  }

  /**
   * `req.session.regenerate()` (sign-in, sign-out): the sidecar rotates the id, so the old one
   * is dead on every unit and the client's cookie is reissued; the request continues with a
   * new, empty express session under the new id, as express-session promises. The app's other
   * tables move with the session.
   */
  regenerate(req, fn) {
    const old = req.sessionID;
    this.rotateEmpty(old)
      .then((id) => {
        req.stickyfarmSessionId = id;
        this.generate(req);
        req[READ] = { sid: id, version: 0, base: null };
        fn(null);
      }, fn);
  }

  // The rotation moves every table; express's own document must not follow (a signed-out
  // user's login would), so it is deleted under the new id.
  async rotateEmpty(old) {
    const id = await this.client.rotate(old);
    await this.client.deleteTable(id, this.table, { ifMatch: '*' });
    return id;
  }
}

module.exports = { StickyfarmStore };
