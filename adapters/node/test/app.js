'use strict';
// The app the tests put behind a real sidecar: a few routes that use express-session the way
// an ordinary Express app does, with the Stickyfarm store.

const express = require('express');
const { stickyfarmSession } = require('..');

function makeApp(storeOptions) {
  const app = express();
  app.use(stickyfarmSession({ secret: 'test-secret-not-for-production', ...storeOptions }));
  const saved = (req, res, next, body) => req.session.save((err) => (err ? next(err) : res.json(body)));

  app.get('/visit', (req, res, next) => {
    req.session.visits = (req.session.visits || 0) + 1;
    saved(req, res, next, { visits: req.session.visits, id: req.sessionID, unit: req.get('x-stickyfarm-unit') });
  });
  // Sets one key after a pause, so that two requests overlap between read and write.
  app.post('/set', (req, res, next) => {
    setTimeout(() => {
      req.session[req.query.key] = req.query.value;
      saved(req, res, next, { ok: true });
    }, Number(req.query.delay || 0));
  });
  app.get('/whoami', (req, res) => res.json({ ...req.session, cookie: undefined, id: req.sessionID }));
  app.post('/login', (req, res, next) => {
    req.session.regenerate((err) => {
      if (err) return next(err);
      req.session.user = req.query.user;
      saved(req, res, next, { id: req.sessionID });
    });
  });
  app.post('/logout', (req, res, next) => {
    req.session.destroy((err) => (err ? next(err) : res.json({ ok: true })));
  });
  app.post('/big', (req, res, next) => {
    req.session.big = 'x'.repeat(Number(req.query.bytes));
    saved(req, res, next, { ok: true });
  });
  app.post('/deep', (req, res, next) => {
    let v = {};
    for (let i = 0; i < Number(req.query.depth); i++) v = { v };
    req.session.deep = v;
    saved(req, res, next, { ok: true });
  });
  // Express's own error handling: the status the adapter's error carries, and its message.
  // eslint-disable-next-line no-unused-vars
  app.use((err, req, res, next) => {
    res.status(err.status || 500).json({ error: err.message, code: err.code });
  });
  return app;
}

/** Starts the app on a free loopback port; resolves to { port, close }. */
function listen(app, port = 0) {
  return new Promise((resolve) => {
    const server = app.listen(port, '127.0.0.1', () => {
      resolve({
        port: server.address().port,
        close: () => new Promise((r) => { server.closeAllConnections(); server.close(() => r()); }),
      });
    });
  });
}

module.exports = { makeApp, listen };
