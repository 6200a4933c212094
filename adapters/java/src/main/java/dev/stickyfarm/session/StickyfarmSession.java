package dev.stickyfarm.session;

import java.time.Duration;
import java.time.Instant;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.springframework.session.Session;
import tools.jackson.databind.JsonNode;
import tools.jackson.databind.json.JsonMapper;
import tools.jackson.databind.node.ObjectNode;

/**
 * A Spring session kept in one table of the sidecar's session. Its id is the sidecar's; its
 * attributes are JSON values (String, Number, Boolean, List, Map, or a Jackson JsonNode), read
 * back as the same JSON types. Expiry is the farm's (idle and absolute timeouts, enforced by the
 * sidecar): this object never expires on its own, and the last access time is not written (the
 * sidecar keeps it), so a request that changes nothing writes nothing.
 */
public final class StickyfarmSession implements Session {
    private final SessionApiClient client;
    private final JsonMapper json;
    private String id;
    private final Map<String, JsonNode> attributes;
    /** What the last read or write saw: the merge base of a conflicting save. */
    ObjectNode base;
    long version;
    boolean dirty;
    private final Instant creationTime;
    private Instant lastAccessedTime = Instant.now();
    private Duration maxInactiveInterval;

    StickyfarmSession(SessionApiClient client, JsonMapper json, String id, long version, ObjectNode stored,
            Duration maxInactiveInterval) {
        this.client = client;
        this.json = json;
        this.id = id;
        this.version = version;
        this.base = stored;
        this.attributes = new LinkedHashMap<>();
        if (stored != null) {
            stored.properties().forEach(e -> attributes.put(e.getKey(), e.getValue()));
        }
        this.creationTime = Instant.now();
        this.maxInactiveInterval = maxInactiveInterval;
    }

    @Override
    public String getId() {
        return id;
    }

    /**
     * On sign-in (Spring Security's session-fixation protection calls this): the sidecar gives
     * the session a new id, the old one dies on every unit and the client's cookie is reissued;
     * the attributes and their version move with it.
     */
    @Override
    public String changeSessionId() {
        id = client.rotate(id);
        return id;
    }

    @Override
    @SuppressWarnings("unchecked")
    public <T> T getAttribute(String name) {
        JsonNode v = attributes.get(name);
        return v == null ? null : (T) json.treeToValue(v, Object.class);
    }

    @Override
    public Set<String> getAttributeNames() {
        return Set.copyOf(attributes.keySet());
    }

    @Override
    public void setAttribute(String name, Object value) {
        if (value == null) {
            removeAttribute(name);
            return;
        }
        attributes.put(name, toJson(name, value));
        dirty = true;
    }

    @Override
    public void removeAttribute(String name) {
        if (attributes.remove(name) != null) {
            dirty = true;
        }
    }

    private JsonNode toJson(String name, Object value) {
        if (value instanceof JsonNode n) {
            return n;
        }
        if (value instanceof String || value instanceof Number || value instanceof Boolean
                || value instanceof Map || value instanceof List) {
            return json.valueToTree(value);
        }
        throw new IllegalArgumentException("session attribute '" + name + "': a " + value.getClass().getName()
                + " cannot be kept as JSON in a Stickyfarm session; store String, Number, Boolean, List, Map or"
                + " a JsonNode (for example the id of what it names)");
    }

    ObjectNode document() {
        return SessionMerge.of(attributes);
    }

    void replaceAttributes(ObjectNode doc) {
        attributes.clear();
        doc.properties().forEach(e -> attributes.put(e.getKey(), e.getValue()));
    }

    @Override
    public Instant getCreationTime() {
        return creationTime;
    }

    @Override
    public void setLastAccessedTime(Instant lastAccessedTime) {
        this.lastAccessedTime = lastAccessedTime;
    }

    @Override
    public Instant getLastAccessedTime() {
        return lastAccessedTime;
    }

    @Override
    public void setMaxInactiveInterval(Duration interval) {
        this.maxInactiveInterval = interval;
    }

    @Override
    public Duration getMaxInactiveInterval() {
        return maxInactiveInterval;
    }

    @Override
    public boolean isExpired() {
        return false;
    }
}
