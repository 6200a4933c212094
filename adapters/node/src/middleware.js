'use strict';
// express-session, made to use the sidecar's session id.
//
// The sidecar owns the session cookie and passes the id in `x-stickyfarm-session` (after
// removing any such header the client sent). express-session reads its id from its own signed
// cookie, so before it runs, the request's cookie is set to the sidecar's id, signed with the
// app's secret: the sidecar's id always wins, whatever the client's cookie says.

const expressSession = require('express-session');
const signature = require('cookie-signature');
const { StickyfarmStore } = require('./store');

const SESSION_HEADER = 'x-stickyfarm-session';

/**
 * `stickyfarmSession({ secret, ...express-session options, store?, table?, url?, socketPath? })`
 * returns the middleware to `app.use()` in place of `session(...)`.
 */
function stickyfarmSession(options = {}) {
  if (!options.secret) throw new TypeError('stickyfarmSession needs a secret (as express-session does)');
  const store = options.store || new StickyfarmStore(options);
  const name = options.name || 'connect.sid';
  const secret = Array.isArray(options.secret) ? options.secret[0] : options.secret;
  const session = expressSession({
    resave: false,
    saveUninitialized: false,
    ...options,
    name,
    store,
    genid: (req) => req.stickyfarmSessionId,
  });
  return function stickyfarm(req, res, next) {
    const id = req.headers[SESSION_HEADER];
    if (typeof id !== 'string' || id === '') {
      const e = new Error(`no ${SESSION_HEADER} header: the app must be reached through the Stickyfarm sidecar, which issues the session id`);
      e.status = 500;
      return next(e);
    }
    req.stickyfarmSessionId = id;
    const own = `${name}=${encodeURIComponent('s:' + signature.sign(id, secret))}`;
    const others = (req.headers.cookie || '')
      .split(';')
      .map((c) => c.trim())
      .filter((c) => c && !c.startsWith(`${name}=`));
    req.headers.cookie = [...others, own].join('; ');
    session(req, res, next);
  };
}

module.exports = { stickyfarmSession, SESSION_HEADER };
