package dev.stickyfarm.session.boot;

import dev.stickyfarm.session.SessionApiClient;
import dev.stickyfarm.session.SidecarSessionIdResolver;
import dev.stickyfarm.session.StickyfarmSessionRepository;
import org.springframework.boot.autoconfigure.AutoConfiguration;
import org.springframework.boot.autoconfigure.condition.ConditionalOnClass;
import org.springframework.boot.autoconfigure.condition.ConditionalOnMissingBean;
import org.springframework.boot.autoconfigure.condition.ConditionalOnProperty;
import org.springframework.boot.autoconfigure.condition.ConditionalOnWebApplication;
import org.springframework.boot.context.properties.EnableConfigurationProperties;
import org.springframework.context.annotation.Bean;
import org.springframework.session.config.annotation.web.http.EnableSpringHttpSession;
import org.springframework.session.web.http.HttpSessionIdResolver;
import tools.jackson.databind.json.JsonMapper;

/**
 * Adding the dependency and {@code stickyfarm.session.api-url=${STICKYFARM_API_URL}} is enough:
 * Spring Session's filter then keeps every HttpSession in the unit's sidecar.
 */
@AutoConfiguration
@ConditionalOnClass({EnableSpringHttpSession.class, jakarta.servlet.Filter.class})
@ConditionalOnWebApplication(type = ConditionalOnWebApplication.Type.SERVLET)
@ConditionalOnProperty(prefix = "stickyfarm.session", name = "api-url")
@EnableConfigurationProperties(StickyfarmSessionProperties.class)
@EnableSpringHttpSession
public class StickyfarmSessionAutoConfiguration {
    @Bean
    @ConditionalOnMissingBean
    public SessionApiClient stickyfarmSessionApiClient(StickyfarmSessionProperties p) {
        return new SessionApiClient(p.getApiUrl(), p.getTimeout(), JsonMapper.builder().build());
    }

    @Bean
    @ConditionalOnMissingBean
    public StickyfarmSessionRepository sessionRepository(SessionApiClient client, StickyfarmSessionProperties p) {
        return new StickyfarmSessionRepository(client, p.getTable(), p.getIdleTimeout());
    }

    @Bean
    @ConditionalOnMissingBean
    public HttpSessionIdResolver httpSessionIdResolver() {
        return new SidecarSessionIdResolver();
    }
}
