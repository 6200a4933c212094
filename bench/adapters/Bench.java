import dev.stickyfarm.session.SessionApiClient;
import dev.stickyfarm.session.StickyfarmSession;
import dev.stickyfarm.session.StickyfarmSessionRepository;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/**
 * The Spring adapter's round trip, as Spring Session's filter makes it on each request that
 * changes the session: StickyfarmSessionRepository.findById, then save (a write with If-Match).
 * The peer in the same run: the same two calls by the JDK's HttpClient. One JSON line per
 * (mode, clients).
 *
 *   java -cp CLASSPATH bench/adapters/Bench.java API_URL PUBLIC_URL ROUND_TRIPS_PER_CLIENT CLIENTS...
 */
public class Bench {
    static final String DOC = "x".repeat(1000);
    static String api;
    static String pub;
    static final HttpClient HTTP = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build();

    interface Trip {
        void run(String sid, int i) throws Exception;
    }

    public static void main(String[] args) throws Exception {
        api = args[0];
        pub = args[1];
        int n = Integer.parseInt(args[2]);
        for (int a = 3; a < args.length; a++) {
            int clients = Integer.parseInt(args[a]);
            for (String mode : List.of("adapter", "raw")) {
                System.out.println(run(mode, clients, n));
            }
        }
    }

    static String newSessionId() throws Exception {
        HttpResponse<Void> r = HTTP.send(HttpRequest.newBuilder(URI.create(pub + "/")).build(),
                HttpResponse.BodyHandlers.discarding());
        for (String c : r.headers().allValues("set-cookie")) {
            if (c.startsWith("sf_session=")) {
                return c.split(";")[0].split("=", 2)[1];
            }
        }
        throw new IllegalStateException("no sf_session cookie");
    }

    static String run(String mode, int clients, int n) throws Exception {
        StickyfarmSessionRepository repo = new StickyfarmSessionRepository(new SessionApiClient(api));
        Trip trip = mode.equals("adapter")
                ? (sid, i) -> {
                    StickyfarmSession s = repo.findById(sid);
                    s.setAttribute("cart", DOC);
                    s.setAttribute("n", i);
                    repo.save(s);
                }
                : (sid, i) -> {
                    String path = api + "/v1/sessions/" + sid + "/tables/raw";
                    HttpResponse<String> g = HTTP.send(HttpRequest.newBuilder(URI.create(path)).build(),
                            HttpResponse.BodyHandlers.ofString());
                    String version = g.statusCode() == 200 ? g.headers().firstValue("etag").orElseThrow() : "\"0\"";
                    HttpResponse<String> w = HTTP.send(HttpRequest.newBuilder(URI.create(path))
                            .header("content-type", "application/json").header("if-match", version)
                            .PUT(HttpRequest.BodyPublishers.ofString("{\"cart\":\"" + DOC + "\",\"n\":" + i + "}"))
                            .build(), HttpResponse.BodyHandlers.ofString());
                    if (w.statusCode() != 200 && w.statusCode() != 201) {
                        throw new IllegalStateException("PUT " + w.statusCode());
                    }
                };
        List<String> ids = new ArrayList<>();
        for (int c = 0; c < clients; c++) {
            ids.add(newSessionId());
        }
        for (String sid : ids) {
            trip.run(sid, 0);
        }
        // Warm the JIT on the first session, not counted.
        for (int i = 1; i <= Math.min(n, 500); i++) {
            trip.run(ids.get(0), -i);
        }
        List<Double> lat = Collections.synchronizedList(new ArrayList<>());
        long deadline = System.nanoTime() + 30_000_000_000L; // bounded in time as well as in count
        long start = System.nanoTime();
        List<Thread> threads = new ArrayList<>();
        for (String sid : ids) {
            Thread worker = new Thread(() -> {
                try {
                    for (int i = 1; i <= n && System.nanoTime() < deadline; i++) {
                        long t = System.nanoTime();
                        trip.run(sid, i);
                        lat.add((System.nanoTime() - t) / 1e6);
                    }
                } catch (Exception e) {
                    throw new RuntimeException(e);
                }
            });
            worker.start();
            threads.add(worker);
        }
        for (Thread t : threads) {
            t.join();
        }
        double seconds = (System.nanoTime() - start) / 1e9;
        List<Double> sorted = new ArrayList<>(lat);
        Collections.sort(sorted);
        return String.format(java.util.Locale.ROOT,
                "{\"adapter\":\"spring (java)\",\"mode\":\"%s\",\"clients\":%d,\"round_trips\":%d,\"seconds\":%.3f,"
                        + "\"per_s\":%d,\"p50_ms\":%.3f,\"p99_ms\":%.3f}",
                mode, clients, sorted.size(), seconds, Math.round(sorted.size() / seconds),
                sorted.get(sorted.size() / 2), sorted.get((int) (sorted.size() * 0.99)));
    }
}
