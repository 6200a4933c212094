'use strict';
// What an adapter does with a 409: the framework wrote the whole session document, based on
// the version it read; another request wrote the table since. Re-apply this request's own
// changes, key by key, on top of what the table holds now; when both changed the same key to
// different values, nobody's change may be dropped silently, so the write is refused instead.
// (The same rule in every adapter: docs/session-api.md, "What an adapter does on 409".)

/** Raised when this request and another changed the same key of one session differently. */
class SessionConflictError extends Error {
  constructor(keys) {
    super(`the session was changed by another request at the same time (keys: ${keys.join(', ')}); ` +
      'nothing of this request was saved: reload and try again');
    this.name = 'SessionConflictError';
    this.code = 'STICKYFARM_CONFLICT';
    this.status = 409;
    this.keys = keys;
  }
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

/**
 * `base`: the document this request read (null: none); `mine`: what it wants to write;
 * `current`: what the table holds now. Returns the document to write, or throws
 * SessionConflictError. Keys in `mineWins` are this request's whatever the other wrote (for
 * bookkeeping such as a cookie's expiry).
 */
function mergeSession(base, mine, current, mineWins = []) {
  const b = base || {};
  const merged = { ...(current || {}) };
  const clashes = [];
  for (const key of new Set([...Object.keys(b), ...Object.keys(mine)])) {
    const changedByMe = !same(mine[key], b[key]);
    if (!changedByMe) continue;
    const changedByThem = !same(merged[key], b[key]);
    if (changedByThem && !same(merged[key], mine[key]) && !mineWins.includes(key)) {
      clashes.push(key);
      continue;
    }
    if (key in mine) merged[key] = mine[key];
    else delete merged[key];
  }
  if (clashes.length) throw new SessionConflictError(clashes);
  return merged;
}

module.exports = { mergeSession, SessionConflictError };
