//! Scenario 2, session reads and writes through the sidecar: the cache against the same
//! request with the cache off (`--cache-reads false`: every read from PostgreSQL), for carts of
//! 1 KiB and 64 KiB (hundreds of line items, the patent's background case).
//!
//! A read is `GET /state`: the app takes the cart from the snapshot the sidecar attaches (up to
//! 16 KiB) or with one call to the session API. A write is `PUT /state`: the app writes the cart
//! through the API, which answers once PostgreSQL has it. Beside each write, PostgreSQL alone
//! runs the sidecar's own write statement at the same concurrency (the ceiling, `pg_alone`),
//! with and without a `pg_notify` in its transaction.

use crate::bench::{Bench, measure};
use crate::pg_alone::{PgBench, Statement};
use crate::served::{Work, checked};
use crate::shoppers::{cart_of_size, open_sessions};
use crate::stats::Rounds;

/// Cart sizes.
pub const SIZES: [(usize, &str); 2] = [(1024, "1 KiB"), (64 * 1024, "64 KiB")];

/// One group: the same request with the cache on and off.
pub struct Group {
    /// e.g. "read, 64 KiB cart".
    pub title: String,
    /// Configurations "cache" and "no cache"; a write group then PostgreSQL alone
    /// ([`WRITE_CEILINGS`]).
    pub rounds: Rounds,
}

/// A group's title: "read, 1 KiB cart", "write, 64 KiB cart".
pub fn group_title(write: bool, size_label: &str) -> String {
    let kind = if write { "write" } else { "read" };
    format!("{kind}, {size_label} cart")
}

/// The configurations a write group adds after the two units.
pub const WRITE_CEILINGS: [(&str, Statement); 2] = [
    ("PostgreSQL alone: the write statement", Statement::Write),
    (
        "PostgreSQL alone: the write statement with its NOTIFY (as before)",
        Statement::WriteAndNotify,
    ),
];

/// Runs the scenario against PostgreSQL at `database_url`.
pub async fn run(b: &Bench, database_url: &str) -> anyhow::Result<Vec<Group>> {
    let logs = b.logs("sessions")?;
    let cpu = b.placement.proxy;
    let cached = b.unit("cached", database_url, &[], cpu, &logs).await?;
    let uncached = b
        .unit(
            "uncached",
            database_url,
            &["--cache-reads", "false"],
            cpu,
            &logs,
        )
        .await?;
    let units = [&cached, &uncached];
    let sessions = if b.args.smoke { 16 } else { 256 };
    let pgbench = PgBench::prepare(
        database_url,
        b.placement.load,
        b.wrk.connections,
        b.duration.as_secs(),
        &logs,
    )?;

    struct Setup {
        title: String,
        method: &'static str,
        body: Option<std::path::PathBuf>,
        cookies: [std::path::PathBuf; 2],
        /// A write: the document PostgreSQL alone writes too.
        doc: Option<String>,
    }
    let mut setups = Vec::new();
    for (size, label) in SIZES {
        let cart = cart_of_size(size);
        let body = logs.join(format!("cart-{size}.json"));
        std::fs::write(&body, &cart)?;
        let mut cookies = Vec::new();
        for u in units {
            let f = logs.join(format!("cookies-{}-{size}.txt", u.name));
            open_sessions(&format!("http://{}", u.public), sessions, &cart, 16, &f).await?;
            cookies.push(f);
        }
        let cookies: [std::path::PathBuf; 2] = cookies.try_into().expect("two units");
        setups.push(Setup {
            title: group_title(false, label),
            method: "GET",
            body: None,
            cookies: cookies.clone(),
            doc: None,
        });
        setups.push(Setup {
            title: group_title(true, label),
            method: "PUT",
            body: Some(body),
            cookies,
            doc: Some(cart),
        });
    }

    let mut groups: Vec<Group> = setups
        .iter()
        .map(|s| {
            let mut configs = vec!["cache", "no cache (PostgreSQL)"];
            if s.doc.is_some() {
                configs.extend(WRITE_CEILINGS.map(|(name, _)| name));
            }
            Group {
                title: s.title.clone(),
                rounds: Rounds::new(configs),
            }
        })
        .collect();
    for round in 0..b.runs {
        eprintln!("  sessions: round {}/{}", round + 1, b.runs);
        for (s, g) in setups.iter().zip(&mut groups) {
            let mut samples = Vec::new();
            for (u, cookies) in units.iter().zip(&s.cookies) {
                let work = if s.doc.is_some() {
                    Work::Writes
                } else {
                    Work::Reads
                };
                samples.push(
                    checked(&[u], work, || {
                        measure(Some(&u.sidecar), || {
                            b.wrk.run(
                                &format!("http://{}/state", u.public),
                                cookies,
                                s.method,
                                s.body.as_deref(),
                            )
                        })
                    })
                    .await?,
                );
            }
            if let Some(doc) = &s.doc {
                for (i, (_, statement)) in WRITE_CEILINGS.iter().enumerate() {
                    let tag = format!("{}-{round}-{i}", doc.len());
                    samples.push(measure(None, || pgbench.write(doc, *statement, &tag))?);
                }
            }
            g.rounds.rounds.push(samples);
        }
    }
    Ok(groups)
}
