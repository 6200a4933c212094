-- Sessions and their application state tables (the patent's database 220).
-- `generation` grows with every committed change to any table of the session; units compare it
-- with their cached copy. `version` is per table and makes writes conditional.
CREATE TABLE stickyfarm_sessions (
    id          uuid PRIMARY KEY,
    generation  bigint      NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    created_by  text        NOT NULL
);

CREATE INDEX stickyfarm_sessions_last_seen ON stickyfarm_sessions (last_seen);
CREATE INDEX stickyfarm_sessions_created_at ON stickyfarm_sessions (created_at);

CREATE TABLE stickyfarm_session_tables (
    session_id  uuid        NOT NULL REFERENCES stickyfarm_sessions (id) ON DELETE CASCADE,
    name        text        NOT NULL,
    version     bigint      NOT NULL CHECK (version > 0),
    doc         jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, name)
);
