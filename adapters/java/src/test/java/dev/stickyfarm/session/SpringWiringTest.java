package dev.stickyfarm.session;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.stickyfarm.session.boot.StickyfarmSessionAutoConfiguration;
import jakarta.servlet.http.HttpSession;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.springframework.boot.autoconfigure.AutoConfigurations;
import org.springframework.boot.test.context.runner.WebApplicationContextRunner;
import org.springframework.mock.web.MockFilterChain;
import org.springframework.mock.web.MockHttpServletRequest;
import org.springframework.mock.web.MockHttpServletResponse;
import org.springframework.session.SessionRepository;
import org.springframework.session.web.http.SessionRepositoryFilter;

/** Spring Boot wiring: the dependency plus one property, and a request through Spring's filter. */
class SpringWiringTest {
    private final WebApplicationContextRunner runner = new WebApplicationContextRunner()
            .withConfiguration(AutoConfigurations.of(StickyfarmSessionAutoConfiguration.class));

    @Test
    void withoutThePropertyNothingIsConfigured() {
        runner.run(ctx -> {
            assertTrue(ctx.getBeansOfType(SessionRepository.class).isEmpty());
            assertTrue(ctx.getBeansOfType(SessionRepositoryFilter.class).isEmpty());
        });
    }

    @Test
    void onePropertyPutsEveryHttpSessionInTheSidecar() throws Exception {
        try (Farm farm = new Farm()) {
            Farm.Unit a = farm.unit("spring-a");
            String id = a.newSessionId();
            runner.withPropertyValues("stickyfarm.session.api-url=" + a.apiUrl()).run(ctx -> {
                assertNotNull(ctx.getBean(StickyfarmSessionRepository.class));
                SessionRepositoryFilter<?> filter = ctx.getBean(SessionRepositoryFilter.class);

                // A request as the sidecar forwards it: the session id in its header.
                MockHttpServletRequest req = new MockHttpServletRequest("POST", "/cart");
                req.addHeader(SidecarSessionIdResolver.HEADER, id);
                MockHttpServletResponse res = new MockHttpServletResponse();
                filter.doFilter(req, res, new MockFilterChain(new jakarta.servlet.http.HttpServlet() {
                    @Override
                    protected void service(jakarta.servlet.http.HttpServletRequest r,
                            jakarta.servlet.http.HttpServletResponse w) {
                        HttpSession session = r.getSession();
                        assertEquals(id, session.getId());
                        session.setAttribute("cart", List.of("tea"));
                    }
                }));
                assertTrue(res.getCookies().length == 0, "the sidecar owns the cookie");
                var stored = new SessionApiClient(a.apiUrl()).getTable(id, "spring").orElseThrow();
                assertEquals("tea", stored.value().get("cart").get(0).asString());
            });
        }
    }
}
