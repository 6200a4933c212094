package dev.stickyfarm.session;

/** The sidecar refused a call of the session API; {@link #status()} is its HTTP status. */
public class SessionApiException extends RuntimeException {
    private final int status;
    private final Long currentVersion;

    public SessionApiException(int status, String message, Long currentVersion) {
        super(message);
        this.status = status;
        this.currentVersion = currentVersion;
    }

    /** 409 stale write, 413 too large, 422 too deep or too many tables, 503 PostgreSQL down. */
    public int status() {
        return status;
    }

    /** On 409: the version the table has now ({@code null} when it does not exist). */
    public Long currentVersion() {
        return currentVersion;
    }
}
