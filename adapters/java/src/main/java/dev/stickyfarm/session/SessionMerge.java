package dev.stickyfarm.session;

import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import tools.jackson.databind.JsonNode;
import tools.jackson.databind.node.JsonNodeFactory;
import tools.jackson.databind.node.ObjectNode;

/**
 * What the repository does with a 409 (the same rule in every Stickyfarm adapter;
 * docs/session-api.md). Spring wrote the session's attributes, based on the version it read, and
 * another request wrote the table since. This request's own changes are applied attribute by
 * attribute on top of what the table holds now; when both changed the same attribute to
 * different values, nobody's change may be dropped silently, so the save is refused instead.
 */
final class SessionMerge {
    private SessionMerge() {}

    static ObjectNode merge(ObjectNode base, ObjectNode mine, ObjectNode current) {
        ObjectNode merged = current == null ? JsonNodeFactory.instance.objectNode() : current.deepCopy();
        ObjectNode b = base == null ? JsonNodeFactory.instance.objectNode() : base;
        Set<String> keys = new LinkedHashSet<>(b.propertyNames());
        keys.addAll(mine.propertyNames());
        List<String> clashes = new ArrayList<>();
        for (String key : keys) {
            JsonNode m = mine.get(key);
            JsonNode o = b.get(key);
            if (Objects.equals(m, o)) {
                continue;
            }
            JsonNode now = merged.get(key);
            if (!Objects.equals(now, o) && !Objects.equals(now, m)) {
                clashes.add(key);
                continue;
            }
            if (m == null) {
                merged.remove(key);
            } else {
                merged.set(key, m);
            }
        }
        if (!clashes.isEmpty()) {
            throw new SessionConflictException(clashes);
        }
        return merged;
    }

    static ObjectNode of(Map<String, JsonNode> values) {
        ObjectNode n = JsonNodeFactory.instance.objectNode();
        values.forEach(n::set);
        return n;
    }
}
