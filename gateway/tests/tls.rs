//! TLS at the gateway, with real clients on loopback: rustls and curl over TLS 1.2 and 1.3 with
//! h2 and http/1.1, sticky Secure cookies, a certificate renewed under load the way a
//! Kubernetes Secret volume renews it (no request fails, open connections keep theirs), bad
//! certificates refused at start and at reload, the HTTP → HTTPS redirect, HSTS, and plain h2c
//! without TLS.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use stickyfarm_testkit::tls::{TLS12, TLS13, TlsClient};
use stickyfarm_testkit::*;

const SECURE: [&str; 2] = ["--cookie-secure", "true"];

fn tls_flags(cert: &Path, key: &Path) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The `name=value` pairs of `Set-Cookie` headers, as a `Cookie` header.
fn cookie_header(set_cookies: &[String]) -> String {
    set_cookies
        .iter()
        .map(|c| c.split(';').next().unwrap().trim().to_owned())
        .collect::<Vec<_>>()
        .join("; ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_speaks_h2_and_http1_over_tls13_and_tls12_with_sticky_secure_cookies() {
    let db = TestDb::new().await;
    let units = [
        Unit::start("web-0", &db.url, &SECURE).await,
        Unit::start("web-1", &db.url, &SECURE).await,
    ];
    let ca = TestCa::new(&["localhost", "127.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.write(dir.path());
    let mut flags = tls_flags(&cert, &key);
    flags.extend(["--hsts-max-age", "1h", "--slow-start", "0s"].map(String::from));
    flags.extend(SECURE.map(String::from));
    let gw = GatewayProc::start(&unit_flags(&units), &strs(&flags)).await;
    gw.wait_up(2).await;

    for (versions, want_tls, alpn, want_http) in [
        (
            TLS13,
            rustls::ProtocolVersion::TLSv1_3,
            &b"h2"[..],
            http::Version::HTTP_2,
        ),
        (
            TLS13,
            rustls::ProtocolVersion::TLSv1_3,
            b"http/1.1",
            http::Version::HTTP_11,
        ),
        (
            TLS12,
            rustls::ProtocolVersion::TLSv1_2,
            b"h2",
            http::Version::HTTP_2,
        ),
        (
            TLS12,
            rustls::ProtocolVersion::TLSv1_2,
            b"http/1.1",
            http::Version::HTTP_11,
        ),
    ] {
        let case = format!("{want_tls:?} {}", String::from_utf8_lossy(alpn));
        let client = TlsClient::new(&[&ca.ca_pem], versions, &[alpn]);
        let mut conn = client.connect(gw.addr, "localhost").await.unwrap();
        assert_eq!(conn.tls_version, Some(want_tls), "{case}");
        assert_eq!(conn.alpn.as_deref(), Some(alpn), "{case}");
        let first = conn.get("/echo", None).await.unwrap();
        assert_eq!(first.status, 200, "{case}: {}", first.body);
        assert_eq!(first.version, want_http, "{case}");
        assert_eq!(first.headers["strict-transport-security"], "max-age=3600");
        let home = first.json()["x-stickyfarm-unit"]
            .as_str()
            .unwrap()
            .to_owned();
        // The app builds its links over https, and every cookie is a Secure host-only one.
        assert!(
            first.json()["x-stickyfarm-unit-url"]
                .as_str()
                .unwrap()
                .starts_with("https://"),
            "{case}: {}",
            first.body
        );
        let cookies = first.set_cookies();
        assert!(
            cookies.iter().any(|c| c.starts_with("__Host-sf_unit="))
                && cookies.iter().any(|c| c.starts_with("__Host-sf_session=")),
            "{case}: {cookies:?}"
        );
        assert!(
            cookies
                .iter()
                .all(|c| c.contains("; Secure") && c.contains("HttpOnly")),
            "{case}: {cookies:?}"
        );
        // Sticky: every later request of the session, on new connections too, stays home.
        let jar = cookie_header(&cookies);
        for _ in 0..5 {
            let again = client
                .get(gw.addr, "localhost", "/echo", Some(&jar))
                .await
                .unwrap();
            assert_eq!(again.json()["x-stickyfarm-unit"], home.as_str(), "{case}");
        }
    }

    // curl (OpenSSL) as the other client: both versions, both protocols.
    let ca_file = dir.path().join("ca.crt");
    for (args, want) in [
        (["--tlsv1.3", "--http2"], "2"),
        (["--tlsv1.2", "--http1.1"], "1.1"),
    ] {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&ca_file)
            .args(args)
            .args(["--tls-max", if want == "2" { "1.3" } else { "1.2" }])
            .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
            .arg(format!("https://localhost:{}/echo", gw.addr.port()))
            .output()
            .expect("curl runs");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("200 {want}"),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A client that does not trust the CA gets no answer; one that speaks plain HTTP to the
    // TLS port neither; both are counted, and honest clients go on.
    let stranger = TestCa::new(&["localhost"]);
    let untrusting = TlsClient::new(&[&stranger.ca_pem], TLS13, &[b"h2"]);
    assert!(untrusting.connect(gw.addr, "localhost").await.is_err());
    let plain = raw_http(
        gw.addr,
        b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        !plain.contains("200"),
        "plain HTTP on the TLS port: {plain}"
    );
    assert!(
        gw.metric("stickyfarm_gateway_tls_handshake_failures_total", "")
            .await
            >= 2.0
    );
    let client = TlsClient::new(&[&ca.ca_pem], TLS13, &[b"h2"]);
    let ok = client
        .get(gw.addr, "localhost", "/echo", None)
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
}

/// Writes a certificate pair the way the kubelet updates a Secret volume: the files are links
/// through `..data`, which is swapped in one rename to a new timestamped folder.
fn publish_secret(dir: &Path, version: usize, cert_pem: &str, key_pem: &str) {
    let folder = format!("..v{version}");
    std::fs::create_dir_all(dir.join(&folder)).unwrap();
    std::fs::write(dir.join(&folder).join("tls.crt"), cert_pem).unwrap();
    std::fs::write(dir.join(&folder).join("tls.key"), key_pem).unwrap();
    let staged = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&staged);
    std::os::unix::fs::symlink(&folder, &staged).unwrap();
    std::fs::rename(&staged, dir.join("..data")).unwrap();
    for file in ["tls.crt", "tls.key"] {
        let link = dir.join(file);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{file}"), &link).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_under_load_without_a_failed_request() {
    let db = TestDb::new().await;
    let units = [Unit::start("web-0", &db.url, &[]).await];
    let (old, new) = (TestCa::new(&["localhost"]), TestCa::new(&["localhost"]));
    let secret = tempfile::tempdir().unwrap();
    publish_secret(secret.path(), 1, &old.server_cert_pem, &old.server_key_pem);
    let mut flags = tls_flags(
        &secret.path().join("tls.crt"),
        &secret.path().join("tls.key"),
    );
    flags.extend(
        [
            "--tls-reload-interval",
            "100ms",
            "--tls-origin",
            "Secret shop/shop-tls",
        ]
        .map(String::from),
    );
    let gw = GatewayProc::start(&unit_flags(&units), &strs(&flags)).await;
    gw.wait_up(1).await;
    let client = TlsClient::new(&[&old.ca_pem, &new.ca_pem], TLS13, &[b"h2", b"http/1.1"]);
    let leaf = |pem: &str| {
        use rustls::pki_types::pem::PemObject as _;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    };

    // A connection opened before the renewal.
    let mut before = client.connect(gw.addr, "localhost").await.unwrap();
    assert_eq!(before.leaf, leaf(&old.server_cert_pem));

    // Load: one shopper's requests, each on a new connection, back to back, bounded in count
    // and time.
    let first = before.get("/echo", None).await.unwrap();
    let jar = Arc::new(cookie_header(&first.set_cookies()));
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, stop, done, failed, addr, jar) = (
            client.clone(),
            stop.clone(),
            done.clone(),
            failed.clone(),
            gw.addr,
            jar.clone(),
        );
        load.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            for _ in 0..5_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                match client.get(addr, "localhost", "/echo", Some(&jar)).await {
                    Ok(a) if a.status == 200 => done.fetch_add(1, Ordering::Relaxed),
                    Ok(a) => {
                        eprintln!("failed: {} {}", a.status, a.body);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish_secret(secret.path(), 2, &new.server_cert_pem, &new.server_key_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let conn = client.connect(gw.addr, "localhost").await.unwrap();
        if conn.leaf == leaf(&new.server_cert_pem) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at_renewal = done.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed across the renewal"
    );
    assert!(
        at_renewal > 0 && done.load(Ordering::Relaxed) > at_renewal,
        "the load ran before and after the renewal: {at_renewal} then {}",
        done.load(Ordering::Relaxed)
    );
    assert_eq!(
        gw.metric("stickyfarm_gateway_tls_reloads_total", "ok")
            .await,
        1.0
    );
    // The connection from before still serves, in its own session.
    let answer = before.get("/echo", None).await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(before.leaf, leaf(&old.server_cert_pem));

    // A broken renewal (the key of another certificate) is refused and said why; the renewed
    // certificate stays in use.
    let other = TestCa::new(&["localhost"]);
    publish_secret(
        secret.path(),
        3,
        &other.server_cert_pem,
        &new.server_key_pem,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw
        .metric("stickyfarm_gateway_tls_reloads_total", "failed")
        .await
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the broken renewal was not noticed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = gw.log_text();
    assert!(
        log.contains("does not belong to the certificate")
            && log.contains("(from Secret shop/shop-tls)"),
        "{log}"
    );
    let conn = client.connect(gw.addr, "localhost").await.unwrap();
    assert_eq!(conn.leaf, leaf(&new.server_cert_pem));
}

/// Runs the gateway binary with a certificate pair; it must refuse to start, within 10 s.
fn refused_start(cert: &Path, key: &Path) -> String {
    let mut child = Command::new(binary("stickyfarm-gateway"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--unit", "web-0=127.0.0.1:1"])
        .args(tls_flags(cert, key))
        .args(["--tls-origin", "Secret shop/shop-tls"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the gateway started with a bad certificate");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    stderr
}

#[test]
fn a_bad_certificate_stops_the_start_naming_the_file_secret_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = TestCa::new(&["localhost"]);
    let other = TestCa::new(&["localhost"]);
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let cert = write("tls.crt", &good.server_cert_pem);
    let foreign_key = write("other.key", &other.server_key_pem);
    let e = refused_start(&cert, &foreign_key);
    assert!(
        e.contains("does not belong to the certificate")
            && e.contains("other.key (from Secret shop/shop-tls)"),
        "{e}"
    );

    let missing = dir.path().join("missing.key");
    let e = refused_start(&cert, &missing);
    assert!(
        e.contains("cannot read the TLS key") && e.contains("missing.key"),
        "{e}"
    );

    // An expired certificate, with its matching key.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = write("expired.crt", &params.self_signed(&key).unwrap().pem());
    let expired_key = write("expired.key", &key.serialize_pem());
    let e = refused_start(&expired, &expired_key);
    assert!(e.contains("expired on") && e.contains("expired.crt"), "{e}");

    let garbage = write("garbage.crt", "not a certificate\n");
    let e = refused_start(&garbage, &foreign_key);
    assert!(
        e.contains("holds no PEM certificate") && e.contains("garbage.crt"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_redirected_to_https_and_h2c_stays_available_without_tls() {
    let db = TestDb::new().await;
    let units = [Unit::start("web-0", &db.url, &[]).await];
    let ca = TestCa::new(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.write(dir.path());
    let redirect_port = free_port();
    let mut flags = tls_flags(&cert, &key);
    // Clients reach the farm as localhost:9443 (say, a Service's port in front).
    flags.extend([
        "--redirect-listen".to_owned(),
        format!("127.0.0.1:{redirect_port}"),
        "--public-host".to_owned(),
        "localhost:9443".to_owned(),
    ]);
    let gw = GatewayProc::start(&unit_flags(&units), &strs(&flags)).await;
    gw.wait_up(1).await;
    let redirect: SocketAddr = ([127, 0, 0, 1], redirect_port).into();
    let answer = raw_http(
        redirect,
        b"POST /cart/add?item=pear HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    assert!(
        answer.contains("location: https://localhost:9443/cart/add?item=pear"),
        "a forged Host does not move the redirect: {answer}"
    );
    // No HSTS unless asked for.
    let client = TlsClient::new(&[&ca.ca_pem], TLS13, &[b"h2"]);
    let a = client
        .get(gw.addr, "localhost", "/echo", None)
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    assert!(a.headers.get("strict-transport-security").is_none());

    // Without TLS the client port speaks h2c with prior knowledge (behind a load balancer
    // that terminates TLS and talks HTTP/2 to the farm).
    let plain = GatewayProc::start(&unit_flags(&units), &[]).await;
    plain.wait_up(1).await;
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2c.get(plain.url("/echo")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), http::Version::HTTP_2);
}
