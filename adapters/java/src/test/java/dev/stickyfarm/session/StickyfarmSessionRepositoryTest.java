package dev.stickyfarm.session;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/** The repository against real sidecars on a real PostgreSQL. */
class StickyfarmSessionRepositoryTest {
    private Farm farm;

    @BeforeEach
    void farm() {
        farm = new Farm();
    }

    @AfterEach
    void stop() throws Exception {
        farm.close();
    }

    private static StickyfarmSessionRepository repository(Farm.Unit u) {
        return new StickyfarmSessionRepository(new SessionApiClient(u.apiUrl()));
    }

    @Test
    void aSessionIsCreatedReadUpdatedAndDeleted() throws Exception {
        Farm.Unit a = farm.unit("crud-a");
        StickyfarmSessionRepository repo = repository(a);
        String id = a.newSessionId();

        StickyfarmSession fresh = repo.findById(id);
        assertTrue(fresh.getAttributeNames().isEmpty(), "an id the sidecar just issued has no state");
        fresh.setAttribute("user", "ada");
        fresh.setAttribute("cart", List.of(Map.of("sku", "tea", "qty", 2)));
        repo.save(fresh);

        StickyfarmSession read = repo.findById(id);
        assertEquals("ada", read.getAttribute("user"));
        assertEquals(List.of(Map.of("sku", "tea", "qty", 2)), read.getAttribute("cart"));
        SessionApiClient api = new SessionApiClient(a.apiUrl());
        assertEquals(1, api.getTable(id, "spring").orElseThrow().version());

        read.setAttribute("user", "grace");
        read.removeAttribute("cart");
        repo.save(read);
        var stored = api.getTable(id, "spring").orElseThrow();
        assertEquals(2, stored.version());
        assertEquals("grace", stored.value().get("user").asString());
        assertFalse(stored.value().has("cart"));

        // A request that changes nothing writes nothing.
        repo.save(repo.findById(id));
        assertEquals(2, api.getTable(id, "spring").orElseThrow().version());

        repo.deleteById(id);
        assertFalse(api.sessionExists(id), "deleted on the sidecar");
    }

    @Test
    void concurrentSavesMergeDifferentAttributesAndRefuseTheSameOne() throws Exception {
        Farm.Unit a = farm.unit("race-a");
        StickyfarmSessionRepository repo = repository(a);
        String id = a.newSessionId();
        StickyfarmSession s = repo.findById(id);
        s.setAttribute("visits", 1);
        repo.save(s);

        StickyfarmSession one = repo.findById(id);
        StickyfarmSession two = repo.findById(id);
        one.setAttribute("colour", "red");
        two.setAttribute("size", "L");
        repo.save(one);
        repo.save(two); // stale: merged onto what `one` wrote
        StickyfarmSession both = repo.findById(id);
        assertEquals("red", both.getAttribute("colour"));
        assertEquals("L", both.getAttribute("size"));

        StickyfarmSession three = repo.findById(id);
        StickyfarmSession four = repo.findById(id);
        three.setAttribute("colour", "green");
        four.setAttribute("colour", "blue");
        repo.save(three);
        SessionConflictException e = assertThrows(SessionConflictException.class, () -> repo.save(four));
        assertEquals(List.of("colour"), e.keys());
        assertEquals("green", repo.findById(id).getAttribute("colour"), "the refused save changed nothing");
    }

    @Test
    void changeSessionIdRotatesOnTheSidecarAndKeepsTheAttributes() throws Exception {
        Farm.Unit a = farm.unit("rotate-a");
        StickyfarmSessionRepository repo = repository(a);
        String id = a.newSessionId();
        StickyfarmSession s = repo.findById(id);
        s.setAttribute("user", "ada");
        repo.save(s);

        String rotated = s.changeSessionId();
        assertNotEquals(id, rotated);
        assertEquals(rotated, s.getId());
        SessionApiClient api = new SessionApiClient(a.apiUrl());
        assertFalse(api.sessionExists(id), "the old id is dead");
        s.setAttribute("role", "admin");
        repo.save(s); // the version moved with the state: no conflict
        StickyfarmSession after = repo.findById(rotated);
        assertEquals("ada", after.getAttribute("user"));
        assertEquals("admin", after.getAttribute("role"));
    }

    @Test
    void aSessionIdleLongerThanTheFarmAllowsIsGone() throws Exception {
        Farm.Unit a = farm.unit("expiry-a", "--idle-timeout", "2s");
        StickyfarmSessionRepository repo = repository(a);
        String id = a.newSessionId();
        StickyfarmSession s = repo.findById(id);
        s.setAttribute("user", "ada");
        repo.save(s);
        assertEquals("ada", repo.findById(id).getAttribute("user"));
        Thread.sleep(3500);
        assertTrue(repo.findById(id).getAttributeNames().isEmpty(), "the expired session is not served");
        assertFalse(new SessionApiClient(a.apiUrl()).sessionExists(id));
    }

    @Test
    void theStateSurvivesASidecarRestartAndAnotherUnitServesItAfterTheFirstStopped() throws Exception {
        Farm.Unit a = farm.unit("restart-a");
        StickyfarmSessionRepository repo = repository(a);
        String id = a.newSessionId();
        StickyfarmSession s = repo.findById(id);
        s.setAttribute("cart", List.of("tea"));
        repo.save(s);

        a.restart(); // same ports, a new instance id
        assertEquals(List.of("tea"), repo.findById(id).getAttribute("cart"));

        Farm.Unit b = farm.unit("restart-b");
        a.stop();
        StickyfarmSession onB = repository(b).findById(id);
        assertEquals(List.of("tea"), onB.getAttribute("cart"), "loaded from PostgreSQL on the other unit");
        onB.setAttribute("cart", List.of("tea", "milk"));
        repository(b).save(onB);
    }

    @Test
    void tooLargeOrTooDeepIsRefusedWithTheSidecarsErrorAndNothingSaved() throws Exception {
        Farm.Unit a = farm.unit("limits-a", "--max-table-size", "64KiB", "--max-json-depth", "16");
        StickyfarmSessionRepository repo = repository(a);
        String id = a.newSessionId();
        StickyfarmSession s = repo.findById(id);
        s.setAttribute("visits", 1);
        repo.save(s);

        StickyfarmSession big = repo.findById(id);
        big.setAttribute("big", "x".repeat(100_000));
        SessionApiException tooLarge = assertThrows(SessionApiException.class, () -> repo.save(big));
        assertEquals(413, tooLarge.status());
        assertTrue(tooLarge.getMessage().contains("max-table-size"), tooLarge.getMessage());

        StickyfarmSession deep = repo.findById(id);
        Object v = Map.of();
        for (int i = 0; i < 40; i++) {
            v = Map.of("v", v);
        }
        deep.setAttribute("deep", v);
        SessionApiException tooDeep = assertThrows(SessionApiException.class, () -> repo.save(deep));
        assertEquals(422, tooDeep.status());
        assertTrue(tooDeep.getMessage().contains("max-json-depth"), tooDeep.getMessage());

        var stored = new SessionApiClient(a.apiUrl()).getTable(id, "spring").orElseThrow();
        assertEquals(1, stored.version(), "nothing was saved");
    }

    @Test
    void anUnreachableSidecarFailsTheCallNeverAnEmptySession() throws Exception {
        int port = Farm.freePort();
        StickyfarmSessionRepository repo = new StickyfarmSessionRepository(
                new SessionApiClient("http://127.0.0.1:" + port, Duration.ofSeconds(2),
                        tools.jackson.databind.json.JsonMapper.builder().build()));
        SidecarUnreachableException e = assertThrows(SidecarUnreachableException.class,
                () -> repo.findById("AAAAAAAAAAAAAAAAAAAAAA"));
        assertTrue(e.getMessage().contains("STICKYFARM_API_URL"), e.getMessage());
    }

    @Test
    void attributesThatAreNotJsonAreRefusedWhenSet() {
        StickyfarmSessionRepository repo = new StickyfarmSessionRepository(new SessionApiClient("http://127.0.0.1:9"));
        StickyfarmSession s = new StickyfarmSession(new SessionApiClient("http://127.0.0.1:9"),
                tools.jackson.databind.json.JsonMapper.builder().build(), "AAAAAAAAAAAAAAAAAAAAAA", 0, null,
                Duration.ofMinutes(30));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> s.setAttribute("when", new java.util.Date()));
        assertTrue(e.getMessage().contains("java.util.Date"), e.getMessage());
        assertNull(s.getAttribute("when"));
        assertThrows(IllegalStateException.class, repo::createSession);
    }
}
