package dev.stickyfarm.session;

/** The sidecar could not be reached at all (not started, stopped, or a wrong address). */
public class SidecarUnreachableException extends RuntimeException {
    public SidecarUnreachableException(String where, Throwable cause) {
        super("the Stickyfarm sidecar's session API at " + where + " is unreachable (" + cause
                + "); is the sidecar running, and does stickyfarm.session.api-url (STICKYFARM_API_URL) name it?",
                cause);
    }
}
