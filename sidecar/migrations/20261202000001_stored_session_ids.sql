-- Session ids are stored as keyed hashes (a stored id), never as the raw id a client presents:
-- whoever reads these tables or listens on their notifications learns nothing a cookie accepts.
-- `stickyfarm_meta` records which key the stored ids were made with (its fingerprint, never the
-- key); rows of an earlier version hold raw ids until the first sidecar with a key re-keys them
-- (`Store::migrate`), which is why a session id may now change under its tables.
CREATE TABLE stickyfarm_meta (
    name   text PRIMARY KEY,
    value  text NOT NULL
);

ALTER TABLE stickyfarm_session_tables
    DROP CONSTRAINT stickyfarm_session_tables_session_id_fkey,
    ADD CONSTRAINT stickyfarm_session_tables_session_id_fkey
        FOREIGN KEY (session_id) REFERENCES stickyfarm_sessions (id)
        ON DELETE CASCADE ON UPDATE CASCADE;
