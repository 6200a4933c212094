//! Choosing listening ports for child processes.
//!
//! A port from `bind(…:0)` comes from the kernel's ephemeral range, the same range outgoing
//! connections take their local ports from: released and handed to a child, it can be taken
//! by some client connection before the child binds it. Ports are therefore chosen below (or
//! above) that range, checked to be bindable, and never handed out twice by one process.

use std::collections::HashSet;
use std::net::{IpAddr, TcpListener};
use std::sync::Mutex;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// The kernel's ephemeral port range (Linux default when it cannot be read).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// A free port on `ip` outside the ephemeral range.
pub fn free_port(ip: IpAddr) -> std::io::Result<u16> {
    let (lo, hi) = ephemeral_range();
    let (start, end) = if lo > 11_000 {
        (10_000u16, lo)
    } else {
        (hi.saturating_add(1), u16::MAX)
    };
    let span = u32::from(end - start);
    for _ in 0..2000 {
        let mut r = [0u8; 4];
        getrandom::fill(&mut r).map_err(std::io::Error::other)?;
        let port = start + (u32::from_le_bytes(r) % span) as u16;
        let mut handed = HANDED_OUT.lock().expect("port set poisoned");
        let handed = handed.get_or_insert_with(HashSet::new);
        if handed.contains(&port) {
            continue;
        }
        if TcpListener::bind((ip, port)).is_ok() {
            handed.insert(port);
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no free port found outside the ephemeral range",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_outside_the_ephemeral_range_and_unique() {
        let (lo, hi) = ephemeral_range();
        let ip = IpAddr::from([127, 0, 0, 1]);
        let ports: Vec<u16> = (0..50).map(|_| free_port(ip).unwrap()).collect();
        assert!(ports.iter().all(|p| *p < lo || *p > hi));
        assert_eq!(ports.iter().collect::<HashSet<_>>().len(), 50);
    }
}
