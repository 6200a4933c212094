//! Probes as the kubelet runs them: httpGet and tcpSocket from the node to the pod's IP, exec
//! inside the container's namespaces, each bounded by its timeout.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Timing of a probe, with Kubernetes' defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Before the first probe.
    pub initial_delay: Duration,
    /// Between probes.
    pub period: Duration,
    /// For one probe.
    pub timeout: Duration,
    /// Consecutive successes that count as success.
    pub success_threshold: u32,
    /// Consecutive failures that count as failure.
    pub failure_threshold: u32,
}

impl Timing {
    /// The probe's timing.
    pub fn of(p: &Probe) -> Timing {
        let secs = |v: Option<i32>, default: u64| {
            Duration::from_secs(v.map_or(default, |v| v.max(0) as u64))
        };
        Timing {
            initial_delay: secs(p.initial_delay_seconds, 0),
            period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: p.success_threshold.map_or(1, |v| v.max(1) as u32),
            failure_threshold: p.failure_threshold.map_or(3, |v| v.max(1) as u32),
        }
    }
}

/// A probe's port: a number, or the name of one of the container's ports.
pub fn port(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} is out of range")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse() {
                return Ok(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("the container has no port named {name:?}"))
        }
    }
}

/// Runs an exec probe's command (the pod supplies how: same namespaces, user and env).
pub type ExecRunner = dyn Fn(Vec<String>, Duration) -> futures::future::BoxFuture<'static, Result<(), String>>
    + Send
    + Sync;

/// One probe: `Ok` on success, `Err` with what failed.
pub async fn once(
    probe: &Probe,
    container: &Container,
    pod_ip: Ipv4Addr,
    exec: &ExecRunner,
) -> Result<(), String> {
    let timeout = Timing::of(probe).timeout;
    if let Some(h) = &probe.http_get {
        if h.scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"))
        {
            return Err("HTTPS probes are not supported by the podlet".into());
        }
        let port = port(container, &h.port)?;
        let host = h.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let path = h.path.as_deref().unwrap_or("/");
        let url = format!("http://{host}:{port}{path}");
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::limited(10))
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let mut req = client.get(&url).header("User-Agent", "kube-probe/1.37");
        for hdr in h.http_headers.iter().flatten() {
            req = req.header(&hdr.name, &hdr.value);
        }
        let resp = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
        let code = resp.status().as_u16();
        return if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!(
                "GET {url}: HTTP probe failed with statuscode: {code}"
            ))
        };
    }
    if let Some(t) = &probe.tcp_socket {
        let port = port(container, &t.port)?;
        let host = t.host.clone().unwrap_or_else(|| pod_ip.to_string());
        return match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: timed out")),
        };
    }
    if let Some(e) = &probe.exec {
        let command = e.command.clone().unwrap_or_default();
        if command.is_empty() {
            return Err("exec probe without a command".into());
        }
        return exec(command, timeout).await;
    }
    Err("the probe has no handler the podlet supports (httpGet, tcpSocket, exec)".into())
}

/// Consecutive results → the probe's verdict, as the kubelet's prober keeps it.
#[derive(Debug, Clone)]
pub struct Verdict {
    timing: Timing,
    successes: u32,
    failures: u32,
    /// The current verdict.
    pub passing: bool,
}

impl Verdict {
    /// Starts at `initially`.
    pub fn new(timing: Timing, initially: bool) -> Self {
        Verdict {
            timing,
            successes: 0,
            failures: 0,
            passing: initially,
        }
    }

    /// Records a result; returns whether the verdict changed.
    pub fn record(&mut self, ok: bool) -> bool {
        let before = self.passing;
        if ok {
            self.failures = 0;
            self.successes += 1;
            if self.successes >= self.timing.success_threshold {
                self.passing = true;
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.failures >= self.timing.failure_threshold {
                self.passing = false;
            }
        }
        before != self.passing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    #[test]
    fn verdicts_flip_only_after_their_thresholds() {
        let t = Timing::of(&Probe {
            failure_threshold: Some(2),
            success_threshold: Some(2),
            ..Probe::default()
        });
        let mut v = Verdict::new(t, false);
        assert!(!v.record(true));
        assert!(v.record(true) && v.passing);
        assert!(!v.record(false));
        assert!(!v.record(true), "a success resets the failures");
        assert!(!v.record(false));
        assert!(v.record(false) && !v.passing);
    }

    #[test]
    fn defaults_are_kubernetes_defaults() {
        let t = Timing::of(&Probe::default());
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
    }

    #[test]
    fn named_ports_resolve_from_the_container() {
        let c = Container {
            ports: Some(vec![ContainerPort {
                name: Some("admin".into()),
                container_port: 9465,
                ..ContainerPort::default()
            }]),
            ..Container::default()
        };
        assert_eq!(
            port(&c, &IntOrString::String("admin".into())).unwrap(),
            9465
        );
        assert_eq!(port(&c, &IntOrString::Int(80)).unwrap(), 80);
        assert!(port(&c, &IntOrString::String("http".into())).is_err());
    }

    #[tokio::test]
    async fn tcp_and_http_probes_hit_real_sockets() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                    let mut buf = [0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]);
                    let status = if req.starts_with("GET /ok ") {
                        "200 OK"
                    } else {
                        "503 Service Unavailable"
                    };
                    let _ = s.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes()).await;
                });
            }
        });
        let c = Container::default();
        let no_exec: Box<ExecRunner> =
            Box::new(|_, _| Box::pin(async { Err("no exec".to_owned()) }));
        let ip = Ipv4Addr::LOCALHOST;
        let http = |path: &str| Probe {
            http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
                path: Some(path.into()),
                port: IntOrString::Int(addr.port().into()),
                ..Default::default()
            }),
            ..Probe::default()
        };
        once(&http("/ok"), &c, ip, &*no_exec).await.unwrap();
        let err = once(&http("/bad"), &c, ip, &*no_exec).await.unwrap_err();
        assert!(err.contains("503"), "{err}");
        let tcp = Probe {
            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                port: IntOrString::Int(addr.port().into()),
                host: None,
            }),
            ..Probe::default()
        };
        once(&tcp, &c, ip, &*no_exec).await.unwrap();
        let closed = Probe {
            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                port: IntOrString::Int(1),
                host: None,
            }),
            ..Probe::default()
        };
        assert!(once(&closed, &c, ip, &*no_exec).await.is_err());
    }
}
