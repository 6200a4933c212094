//! Pod networking with iproute2: one bridge, and per pod a network namespace joined to it by a
//! veth pair. The host keeps the bridge's address, so tests on this machine reach every pod.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;

use crate::{Error, Settings};

/// Prefix of the podlet's network namespaces (so a restart finds and removes leftovers).
pub const NETNS_PREFIX: &str = "sfp-";

async fn ip(settings: &Settings, args: &[&str]) -> Result<(), Error> {
    let out = tokio::process::Command::new(&settings.ip_command)
        .args(args)
        .output()
        .await
        .map_err(|e| Error::setup(format!("running ip {}", args.join(" ")), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::setup(
            format!("ip {}", args.join(" ")),
            String::from_utf8_lossy(&out.stderr).trim(),
        ))
    }
}

/// Creates the bridge with the host's address (or keeps it), and removes network namespaces a
/// previous podlet left behind.
pub async fn ensure_bridge(settings: &Settings) -> Result<(), Error> {
    let b = settings.bridge.as_str();
    if !Path::new("/sys/class/net").join(b).exists() {
        ip(settings, &["link", "add", b, "type", "bridge"]).await?;
    }
    let addr = format!("{}/24", settings.bridge_ip);
    // `replace` keeps an existing address instead of failing on it.
    ip(settings, &["addr", "replace", &addr, "dev", b]).await?;
    ip(settings, &["link", "set", b, "up"]).await?;
    for ns in leftover_namespaces() {
        tracing::warn!(netns = %ns, "removing a network namespace a previous podlet left");
        kill_namespace_processes(settings, &ns).await;
        let _ = ip(settings, &["netns", "delete", &ns]).await;
    }
    Ok(())
}

/// Removes the bridge (its veths go with the namespaces).
pub async fn remove_bridge(settings: &Settings) {
    let _ = ip(settings, &["link", "delete", &settings.bridge]).await;
}

fn leftover_namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(NETNS_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

async fn kill_namespace_processes(settings: &Settings, ns: &str) {
    if let Ok(out) = tokio::process::Command::new(&settings.ip_command)
        .args(["netns", "pids", ns])
        .output()
        .await
    {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Hands out the bridge's other addresses.
#[derive(Debug)]
pub struct Addresses {
    base: [u8; 3],
    bridge: u8,
    used: Mutex<BTreeSet<u8>>,
}

impl Addresses {
    /// Addresses of `bridge_ip`'s /24.
    pub fn new(bridge_ip: Ipv4Addr) -> Self {
        let o = bridge_ip.octets();
        Addresses {
            base: [o[0], o[1], o[2]],
            bridge: o[3],
            used: Mutex::new(BTreeSet::new()),
        }
    }

    /// A free address, or `None` when all 253 are taken.
    pub fn take(&self) -> Option<Ipv4Addr> {
        let mut used = self.used.lock().expect("address lock");
        let last = (2..=254).find(|n| *n != self.bridge && !used.contains(n))?;
        used.insert(last);
        Some(Ipv4Addr::new(
            self.base[0],
            self.base[1],
            self.base[2],
            last,
        ))
    }

    /// Gives an address back.
    pub fn give_back(&self, ip: Ipv4Addr) {
        self.used
            .lock()
            .expect("address lock")
            .remove(&ip.octets()[3]);
    }
}

/// A pod's network: its namespace and address.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    /// Network namespace name (`ip netns`).
    pub netns: String,
    /// The pod's IP.
    pub ip: Ipv4Addr,
    host_veth: String,
}

/// Creates the pod's namespace, its veth pair on the bridge, loopback, address and route.
pub async fn create(
    settings: &Settings,
    key: &str,
    ip_addr: Ipv4Addr,
) -> Result<PodNetwork, Error> {
    let netns = format!("{NETNS_PREFIX}{key}");
    // Interface names have at most 15 bytes.
    let host_veth = format!("sfv{}", &key[..key.len().min(11)]);
    let net = PodNetwork {
        netns,
        ip: ip_addr,
        host_veth,
    };
    let ns = net.netns.as_str();
    // Name files for `ip netns exec` (it binds /etc/netns/<ns>/* over /etc/*).
    std::fs::create_dir_all(format!("/etc/netns/{ns}"))
        .map_err(|e| Error::setup(format!("creating /etc/netns/{ns}"), e))?;
    ip(settings, &["netns", "add", ns]).await?;
    let result = async {
        ip(
            settings,
            &[
                "link",
                "add",
                &net.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            ],
        )
        .await?;
        ip(
            settings,
            &[
                "link",
                "set",
                &net.host_veth,
                "master",
                &settings.bridge,
                "up",
            ],
        )
        .await?;
        let addr = format!("{ip_addr}/24");
        ip(settings, &["-n", ns, "addr", "add", &addr, "dev", "eth0"]).await?;
        ip(settings, &["-n", ns, "link", "set", "lo", "up"]).await?;
        ip(settings, &["-n", ns, "link", "set", "eth0", "up"]).await?;
        let gw = settings.bridge_ip.to_string();
        ip(settings, &["-n", ns, "route", "add", "default", "via", &gw]).await
    }
    .await;
    if let Err(e) = result {
        delete(settings, &net).await;
        return Err(e);
    }
    Ok(net)
}

/// Removes the pod's namespace (which removes its veth pair) and name files. Processes still in
/// the namespace are killed first.
pub async fn delete(settings: &Settings, net: &PodNetwork) {
    kill_namespace_processes(settings, &net.netns).await;
    let _ = ip(settings, &["link", "delete", &net.host_veth]).await;
    let _ = ip(settings, &["netns", "delete", &net.netns]).await;
    let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", net.netns));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_skip_the_bridge_and_are_reused_after_release() {
        let a = Addresses::new(Ipv4Addr::new(10, 244, 0, 1));
        let first = a.take().unwrap();
        assert_eq!(first, Ipv4Addr::new(10, 244, 0, 2));
        let second = a.take().unwrap();
        assert_eq!(second, Ipv4Addr::new(10, 244, 0, 3));
        a.give_back(first);
        assert_eq!(a.take().unwrap(), first);
        let all: Vec<_> = std::iter::from_fn(|| a.take()).collect();
        assert_eq!(all.len(), 253 - 2, "every other address of the /24 once");
        assert!(!all.contains(&Ipv4Addr::new(10, 244, 0, 1)));
    }
}
