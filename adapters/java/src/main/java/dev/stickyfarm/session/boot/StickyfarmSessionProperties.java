package dev.stickyfarm.session.boot;

import java.time.Duration;
import org.springframework.boot.context.properties.ConfigurationProperties;

/** {@code stickyfarm.session.*}: only {@code api-url} must be set. */
@ConfigurationProperties("stickyfarm.session")
public class StickyfarmSessionProperties {
    /** The sidecar's session API, e.g. {@code ${STICKYFARM_API_URL}} (set by the operator and farmctl). */
    private String apiUrl;
    /** The table of the Stickyfarm session holding Spring's attributes. */
    private String table = "spring";
    /** How long one call of the session API may take. */
    private Duration timeout = Duration.ofSeconds(5);
    /** What Spring reports as the maximum inactive interval: the farm's idle timeout rules. */
    private Duration idleTimeout = Duration.ofMinutes(30);

    public String getApiUrl() { return apiUrl; }
    public void setApiUrl(String apiUrl) { this.apiUrl = apiUrl; }
    public String getTable() { return table; }
    public void setTable(String table) { this.table = table; }
    public Duration getTimeout() { return timeout; }
    public void setTimeout(Duration timeout) { this.timeout = timeout; }
    public Duration getIdleTimeout() { return idleTimeout; }
    public void setIdleTimeout(Duration idleTimeout) { this.idleTimeout = idleTimeout; }
}
