package dev.stickyfarm.session;

import java.util.List;

/** This request and another changed the same attributes of one session at the same time. */
public class SessionConflictException extends RuntimeException {
    private final List<String> keys;

    public SessionConflictException(List<String> keys) {
        super("the session was changed by another request at the same time (attributes: "
                + String.join(", ", keys) + "); nothing of this request was saved: reload and try again");
        this.keys = List.copyOf(keys);
    }

    public List<String> keys() {
        return keys;
    }
}
