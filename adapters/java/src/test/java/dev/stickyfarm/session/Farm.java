package dev.stickyfarm.session;

import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.SecureRandom;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.UUID;
import java.util.concurrent.TimeUnit;

/**
 * Real sidecars for the tests: the {@code stickyfarm-sidecar} binary ($STICKYFARM_SIDECAR) on
 * loopback, on the PostgreSQL database $DATABASE_URL (adapters/test makes a fresh one). Each unit's
 * app is a tiny JDK HTTP server that answers with the session id the sidecar passed it, which is
 * how a test gets ids the sidecar issued.
 */
final class Farm implements AutoCloseable {
    private static final Path DIR;
    private static final Path KEY;

    static {
        try {
            DIR = Files.createTempDirectory("stickyfarm-java-");
            // One session-id key for every unit of the suite, as the operator keeps in a Secret.
            KEY = DIR.resolve("session-id-key");
            byte[] k = new byte[24];
            new SecureRandom().nextBytes(k);
            Files.writeString(KEY, HexFormat.of().formatHex(k));
        } catch (IOException e) {
            throw new ExceptionInInitializerError(e);
        }
    }

    final class Unit {
        final String name;
        final int[] ports; // public, api, admin
        final HttpServer app;
        Process sidecar;

        Unit(String name, int[] ports, HttpServer app, Process sidecar) {
            this.name = name;
            this.ports = ports;
            this.app = app;
            this.sidecar = sidecar;
        }

        String url() {
            return "http://127.0.0.1:" + ports[0];
        }

        String apiUrl() {
            return "http://127.0.0.1:" + ports[1];
        }

        /** A session id the sidecar issues to a new client. */
        String newSessionId() throws Exception {
            HttpResponse<String> r = http.send(HttpRequest.newBuilder(URI.create(url() + "/id")).build(),
                    HttpResponse.BodyHandlers.ofString());
            if (r.statusCode() != 200) {
                throw new IllegalStateException("the app answered " + r.statusCode() + ": " + r.body());
            }
            return r.body();
        }

        void stop() throws Exception {
            stopProcess(sidecar);
        }

        void restart(String... args) throws Exception {
            stopProcess(sidecar);
            sidecar = startSidecar(name, ports, app.getAddress().getPort(), args);
        }
    }

    private final HttpClient http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();
    private final List<Unit> units = new ArrayList<>();

    Unit unit(String name, String... sidecarArgs) throws Exception {
        HttpServer app = HttpServer.create(new InetSocketAddress("127.0.0.1", 0), 0);
        app.createContext("/", ex -> {
            String id = ex.getRequestHeaders().getFirst("x-stickyfarm-session");
            byte[] body = (id == null ? "" : id).getBytes(StandardCharsets.UTF_8);
            ex.sendResponseHeaders(200, body.length);
            ex.getResponseBody().write(body);
            ex.close();
        });
        app.start();
        int[] ports = {freePort(), freePort(), freePort()};
        Unit u = new Unit(name, ports, app, startSidecar(name, ports, app.getAddress().getPort(), sidecarArgs));
        units.add(u);
        return u;
    }

    static int freePort() throws IOException {
        try (ServerSocket s = new ServerSocket(0, 1, java.net.InetAddress.getLoopbackAddress())) {
            return s.getLocalPort();
        }
    }

    private Process startSidecar(String unit, int[] ports, int appPort, String... args) throws Exception {
        List<String> cmd = new ArrayList<>(List.of(required("STICKYFARM_SIDECAR"),
                "--listen", "127.0.0.1:" + ports[0], "--api-listen", "127.0.0.1:" + ports[1],
                "--admin-listen", "127.0.0.1:" + ports[2], "--app-url", "http://127.0.0.1:" + appPort,
                "--unit", unit, "--pod-uid", UUID.randomUUID().toString(),
                "--session-id-key-file", KEY.toString(), "--shutdown-grace", "2s"));
        cmd.addAll(List.of(args));
        ProcessBuilder pb = new ProcessBuilder(cmd);
        pb.environment().clear();
        pb.environment().put("PATH", System.getenv("PATH"));
        pb.environment().put("DATABASE_URL", required("DATABASE_URL"));
        Path log = DIR.resolve(unit + ".log");
        pb.redirectErrorStream(true).redirectOutput(ProcessBuilder.Redirect.appendTo(log.toFile()));
        Process p = pb.start();
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
        while (true) {
            if (!p.isAlive()) {
                throw new IllegalStateException("sidecar " + unit + " exited: " + Files.readString(log));
            }
            try {
                HttpResponse<Void> r = http.send(HttpRequest.newBuilder(
                        URI.create("http://127.0.0.1:" + ports[0] + "/_stickyfarm/health")).build(),
                        HttpResponse.BodyHandlers.discarding());
                if (r.statusCode() == 200) {
                    return p;
                }
            } catch (IOException notYet) {
                // Not listening yet.
            }
            if (System.nanoTime() > deadline) {
                p.destroyForcibly().waitFor();
                throw new IllegalStateException("sidecar " + unit + " not healthy in 20 s: " + Files.readString(log));
            }
            Thread.sleep(50);
        }
    }

    private static void stopProcess(Process p) throws InterruptedException {
        if (p.isAlive()) {
            p.destroy(); // SIGTERM: the sidecar drains and stops
            if (!p.waitFor(30, TimeUnit.SECONDS)) {
                p.destroyForcibly().waitFor();
            }
        }
    }

    private static String required(String name) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            throw new IllegalStateException(name + " is not set: run the suite with adapters/test, which starts"
                    + " PostgreSQL and builds the sidecar");
        }
        return v;
    }

    @Override
    public void close() throws Exception {
        for (Unit u : units) {
            if (u.sidecar.isAlive()) {
                u.sidecar.destroyForcibly().waitFor();
            }
            u.app.stop(0);
        }
    }
}
