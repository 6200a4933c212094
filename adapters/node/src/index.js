'use strict';
// Stickyfarm for Express: keep express-session's sessions in the unit's sidecar.
const { SessionApiClient, SessionApiError, SidecarUnreachableError, resolveAddress } = require('./client');
const { StickyfarmStore } = require('./store');
const { stickyfarmSession, SESSION_HEADER } = require('./middleware');
const { mergeSession, SessionConflictError } = require('./merge');

module.exports = {
  stickyfarmSession,
  StickyfarmStore,
  SessionApiClient,
  SessionApiError,
  SidecarUnreachableError,
  SessionConflictError,
  mergeSession,
  resolveAddress,
  SESSION_HEADER,
};
