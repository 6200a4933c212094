package dev.stickyfarm.session;

import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import java.util.List;
import org.springframework.session.web.http.HttpSessionIdResolver;

/**
 * The session id is the one the sidecar passes in {@code x-stickyfarm-session} (it removes any
 * such header a client sent, so it cannot be forged). The sidecar owns the cookie and reissues it
 * after a rotation, so nothing is written to the response.
 */
public final class SidecarSessionIdResolver implements HttpSessionIdResolver {
    public static final String HEADER = "x-stickyfarm-session";

    @Override
    public List<String> resolveSessionIds(HttpServletRequest request) {
        String id = request.getHeader(HEADER);
        return id == null || id.isEmpty() ? List.of() : List.of(id);
    }

    @Override
    public void setSessionId(HttpServletRequest request, HttpServletResponse response, String sessionId) {
        // The sidecar sets the cookie.
    }

    @Override
    public void expireSession(HttpServletRequest request, HttpServletResponse response) {
        // The sidecar forgets a deleted session and issues a new id on the next request.
    }
}
