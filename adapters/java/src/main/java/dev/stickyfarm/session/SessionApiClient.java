package dev.stickyfarm.session;

import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.Optional;
import java.util.regex.Pattern;
import tools.jackson.databind.JsonNode;
import tools.jackson.databind.json.JsonMapper;

/**
 * A client of the sidecar's session API (docs/session-api.openapi.json in the repository), over
 * its TCP port on loopback ({@code STICKYFARM_API_URL}). The JDK's HTTP client keeps the
 * connections alive.
 */
public final class SessionApiClient {
    private static final Pattern SEGMENT = Pattern.compile("^[A-Za-z0-9_-]{1,64}$");

    /** One table: its JSON document and its version (the ETag). */
    public record Table(long version, JsonNode value) {}

    /** A committed write: the table's new version and the session's generation. */
    public record WriteAck(long version, long generation) {}

    private final URI base;
    private final HttpClient http;
    private final Duration timeout;
    private final JsonMapper json;

    public SessionApiClient(String baseUrl, Duration timeout, JsonMapper json) {
        URI uri = URI.create(baseUrl.endsWith("/") ? baseUrl.substring(0, baseUrl.length() - 1) : baseUrl);
        if (!"http".equals(uri.getScheme()) || uri.getHost() == null) {
            throw new IllegalArgumentException("the session API URL " + baseUrl + " is not http://host:port");
        }
        this.base = uri;
        this.timeout = timeout;
        this.json = json;
        this.http = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).connectTimeout(timeout).build();
    }

    public SessionApiClient(String baseUrl) {
        this(baseUrl, Duration.ofSeconds(5), JsonMapper.builder().build());
    }

    public String where() {
        return base.toString();
    }

    /** One table, or empty when it (or the session) does not exist. */
    public Optional<Table> getTable(String id, String table) {
        HttpResponse<String> r = send(request(tablePath(id, table)).GET());
        if (r.statusCode() == 404) {
            return Optional.empty();
        }
        expect(r, 200);
        long version = Long.parseLong(r.headers().firstValue("etag").orElse("\"0\"").replace("\"", ""));
        return Optional.of(new Table(version, json.readTree(r.body())));
    }

    /**
     * Writes a table through to PostgreSQL. {@code ifMatch}: the version the write is based on
     * (0: the table must not exist yet); {@code null} for "the version this unit cached". A stale
     * write throws a {@link SessionApiException} of status 409.
     */
    public WriteAck putTable(String id, String table, JsonNode value, Long ifMatch) {
        HttpRequest.Builder b = request(tablePath(id, table))
                .header("content-type", "application/json")
                .PUT(HttpRequest.BodyPublishers.ofString(json.writeValueAsString(value)));
        if (ifMatch != null) {
            b.header("if-match", "\"" + ifMatch + "\"");
        }
        HttpResponse<String> r = send(b);
        expect(r, 200, 201);
        JsonNode ack = json.readTree(r.body());
        return new WriteAck(ack.get("version").asLong(), ack.get("generation").asLong());
    }

    /** Deletes a table whatever its version; false when it did not exist. */
    public boolean deleteTable(String id, String table) {
        HttpResponse<String> r = send(request(tablePath(id, table)).header("if-match", "*").DELETE());
        if (r.statusCode() == 404) {
            return false;
        }
        expect(r, 204);
        return true;
    }

    /** Deletes the session on every unit (logout); false when it did not exist. */
    public boolean deleteSession(String id) {
        HttpResponse<String> r = send(request("/v1/sessions/" + segment("session id", id)).DELETE());
        if (r.statusCode() == 404) {
            return false;
        }
        expect(r, 204);
        return true;
    }

    /** Whether the session exists (stored, or issued by this unit without state yet). */
    public boolean sessionExists(String id) {
        HttpResponse<String> r = send(request("/v1/sessions/" + segment("session id", id)).GET());
        if (r.statusCode() == 404) {
            return false;
        }
        expect(r, 200);
        return true;
    }

    /** Moves the session to a new id (sign-in, sign-out); returns the new id. */
    public String rotate(String id) {
        HttpResponse<String> r = send(request("/v1/sessions/" + segment("session id", id) + "/rotate")
                .POST(HttpRequest.BodyPublishers.noBody()));
        expect(r, 200);
        return json.readTree(r.body()).get("id").asString();
    }

    private static String tablePath(String id, String table) {
        return "/v1/sessions/" + segment("session id", id) + "/tables/" + segment("table name", table);
    }

    // Ids and table names never need escaping; anything else is a caller's bug, refused before
    // it can become another path.
    private static String segment(String what, String value) {
        if (value == null || !SEGMENT.matcher(value).matches()) {
            throw new IllegalArgumentException("invalid " + what + " '" + value + "': expected [A-Za-z0-9_-]{1,64}");
        }
        return value;
    }

    private HttpRequest.Builder request(String path) {
        return HttpRequest.newBuilder(base.resolve(path)).timeout(timeout);
    }

    private HttpResponse<String> send(HttpRequest.Builder b) {
        try {
            return http.send(b.build(), HttpResponse.BodyHandlers.ofString());
        } catch (IOException e) {
            throw new SidecarUnreachableException(where(), e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new SidecarUnreachableException(where(), e);
        }
    }

    private void expect(HttpResponse<String> r, int... ok) {
        for (int s : ok) {
            if (r.statusCode() == s) {
                return;
            }
        }
        String message = "no reason given";
        Long current = null;
        try {
            JsonNode body = json.readTree(r.body());
            if (body != null && body.hasNonNull("error")) {
                message = body.get("error").asString();
            }
            if (body != null && body.hasNonNull("current_version")) {
                current = body.get("current_version").asLong();
            }
        } catch (RuntimeException notJson) {
            // The status alone says what failed.
        }
        throw new SessionApiException(r.statusCode(),
                "the session API refused the request (" + r.statusCode() + "): " + message, current);
    }
}
