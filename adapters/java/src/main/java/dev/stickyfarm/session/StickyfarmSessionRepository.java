package dev.stickyfarm.session;

import java.time.Duration;
import org.springframework.session.SessionRepository;
import tools.jackson.databind.JsonNode;
import tools.jackson.databind.json.JsonMapper;
import tools.jackson.databind.node.ObjectNode;

/**
 * Spring Session's repository on the unit's Stickyfarm sidecar: the session's attributes are one
 * JSON document in the table {@code spring} (configurable) of the sidecar's session, cached by the
 * unit and written through to PostgreSQL, served by a backup unit when this one fails.
 *
 * <p>Each save names the version it was based on: a save that lost a race is merged attribute by
 * attribute, or refused with {@link SessionConflictException}; it is never silently dropped.
 */
public final class StickyfarmSessionRepository implements SessionRepository<StickyfarmSession> {
    static final int RETRIES = 3;

    private final SessionApiClient client;
    private final JsonMapper json;
    private final String table;
    private final Duration idleTimeout;

    public StickyfarmSessionRepository(SessionApiClient client, String table, Duration idleTimeout) {
        this.client = client;
        this.json = JsonMapper.builder().build();
        this.table = table;
        this.idleTimeout = idleTimeout;
    }

    public StickyfarmSessionRepository(SessionApiClient client) {
        this(client, "spring", Duration.ofMinutes(30));
    }

    /**
     * Spring asks for a new session only when the request carries no session id, which never
     * happens behind the sidecar: it issues every id and passes it to the app.
     */
    @Override
    public StickyfarmSession createSession() {
        throw new IllegalStateException("no x-stickyfarm-session header on this request: the app must be"
                + " reached through the Stickyfarm sidecar, which issues the session id");
    }

    /**
     * The session behind the sidecar's id: its stored attributes, or none yet for an id the
     * sidecar just issued (it is stored by its first save).
     */
    @Override
    public StickyfarmSession findById(String id) {
        return client.getTable(id, table)
                .map(t -> new StickyfarmSession(client, json, id, t.version(), asObject(t.value()), idleTimeout))
                .orElseGet(() -> new StickyfarmSession(client, json, id, 0, null, idleTimeout));
    }

    @Override
    public void save(StickyfarmSession session) {
        if (!session.dirty) {
            return;
        }
        ObjectNode mine = session.document();
        ObjectNode attempt = mine;
        ObjectNode base = session.base;
        long version = session.version;
        for (int i = 0; ; i++) {
            try {
                SessionApiClient.WriteAck ack = client.putTable(session.getId(), table, attempt, version);
                session.version = ack.version();
                session.base = attempt.deepCopy();
                session.replaceAttributes(attempt);
                session.dirty = false;
                return;
            } catch (SessionApiException e) {
                if (e.status() != 409 || i >= RETRIES) {
                    throw e;
                }
                var current = client.getTable(session.getId(), table);
                ObjectNode now = current.map(t -> asObject(t.value())).orElse(null);
                attempt = SessionMerge.merge(base, mine, now);
                version = current.map(SessionApiClient.Table::version).orElse(0L);
                base = now;
                mine = attempt;
            }
        }
    }

    /** Invalidation (logout): the session is deleted on every unit. */
    @Override
    public void deleteById(String id) {
        client.deleteSession(id);
    }

    private static ObjectNode asObject(JsonNode n) {
        return n instanceof ObjectNode o ? o : null;
    }
}
