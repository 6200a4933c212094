//! The status page of the admin port (`GET /`): the unit table a person reads, like HAProxy's
//! stats page. One self-contained HTML document: no script, no external asset (the page's
//! Content-Security-Policy forbids both), refreshed by the browser (`<meta http-equiv=refresh>`),
//! laid out as a table on a wide screen and as one card per unit on a phone.
//!
//! Rendering is a pure function of the status rows (the same rows `GET /status` serves as JSON),
//! so tests check it without a browser and the browser test checks how it looks.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use crate::units::{AdminState, Health, UnitStatus};

/// Seconds between refreshes unless the URL says `?refresh=N` (0: never).
pub const DEFAULT_REFRESH_SECS: u32 = 5;
/// The longest refresh a URL may ask for.
pub const MAX_REFRESH_SECS: u32 = 3600;

/// The headers the page is served with: no script may run, nothing is loaded from elsewhere,
/// no other site may frame it.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the page shows besides the units.
pub struct PageContext {
    /// Now (Unix ms): ages are shown relative to it.
    pub now_ms: u64,
    /// Seconds between refreshes (0: never).
    pub refresh_secs: u32,
}

/// The page for these units.
pub fn render(units: &[UnitStatus], ctx: &PageContext) -> String {
    let mut html = String::with_capacity(4096 + units.len() * 1024);
    head(&mut html, units, ctx);
    summary(&mut html, units, ctx);
    table(&mut html, units, ctx);
    html.push_str("</main></body></html>\n");
    html
}

fn head(html: &mut String, units: &[UnitStatus], ctx: &PageContext) {
    let up = units.iter().filter(|u| u.state == Health::Up).count();
    html.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    html.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    if ctx.refresh_secs > 0 {
        let _ = write!(
            html,
            "<meta http-equiv=\"refresh\" content=\"{}\">",
            ctx.refresh_secs
        );
    }
    let _ = write!(
        html,
        "<title>{up}/{} units up · Stickyfarm gateway</title><style>{STYLE}</style></head><body>",
        units.len()
    );
}

fn summary(html: &mut String, units: &[UnitStatus], ctx: &PageContext) {
    let up = units.iter().filter(|u| u.state == Health::Up).count();
    let in_flight: u64 = units.iter().map(|u| u.in_flight).sum();
    let rate: f64 = units.iter().map(|u| u.requests_per_second).sum();
    let sessions: u64 = units.iter().filter_map(|u| u.sessions).sum();
    let health = if up == units.len() && up > 0 {
        "ok"
    } else if up == 0 {
        "down"
    } else {
        "degraded"
    };
    let _ = write!(
        html,
        "<header><h1>Stickyfarm gateway</h1>\
         <p class=\"summary {health}\"><strong>{up} of {} units up</strong> · {in_flight} in flight · \
         {} req/s · {sessions} sessions held</p>",
        units.len(),
        number(rate),
    );
    let generated =
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ctx.now_ms));
    let refresh = if ctx.refresh_secs > 0 {
        format!("refreshes every {} s", ctx.refresh_secs)
    } else {
        "does not refresh".to_owned()
    };
    let _ = write!(
        html,
        "<p class=\"meta\">{generated} · {refresh} · \
         <a href=\"status\">JSON</a> · <a href=\"metrics\">metrics</a></p></header><main>"
    );
}

/// The columns, in order: heading and how a unit's cell is written.
const COLUMNS: [&str; 13] = [
    "Unit",
    "State",
    "Admin",
    "Instance",
    "Sessions",
    "Warm copies",
    "In flight",
    "Req/s",
    "Answer",
    "Last check",
    "Last error",
    "Ejections",
    "Weight",
];

fn table(html: &mut String, units: &[UnitStatus], ctx: &PageContext) {
    if units.is_empty() {
        html.push_str("<p class=\"empty\">No units yet: the farm has none, or discovery has not listed them.</p>");
        return;
    }
    html.push_str("<table><thead><tr>");
    for c in COLUMNS {
        let _ = write!(html, "<th scope=\"col\">{c}</th>");
    }
    html.push_str("</tr></thead><tbody>");
    for u in units {
        row(html, u, ctx);
    }
    html.push_str("</tbody></table>");
}

fn row(html: &mut String, u: &UnitStatus, ctx: &PageContext) {
    let state = health_word(u.state);
    let _ = write!(html, "<tr class=\"{state}\">");
    let cells: [String; 13] = [
        format!(
            "<span class=\"name\">{}</span><span class=\"addr\">{}</span>",
            escape(&u.name),
            escape(&u.address)
        ),
        format!("<span class=\"badge {state}\">{state}</span>"),
        {
            let admin = admin_word(u.admin);
            format!("<span class=\"badge {admin}\">{admin}</span>")
        },
        match &u.instance {
            // The first block of the pod UID tells pods apart; the whole one is in the title.
            Some(i) => format!(
                "<span title=\"{}\">{}</span>",
                escape(i),
                escape(i.split('-').next().unwrap_or(i))
            ),
            None => "–".to_owned(),
        },
        u.sessions.map_or("–".to_owned(), |s| s.to_string()),
        u.warm_copies.map_or("–".to_owned(), |s| s.to_string()),
        u.in_flight.to_string(),
        number(u.requests_per_second),
        u.answer_ms
            .map_or("–".to_owned(), |ms| format!("{} ms", number(ms))),
        match (u.last_check_unix_ms, u.last_latency_ms) {
            (Some(at), latency) => format!(
                "{} ago{}",
                age(ctx.now_ms.saturating_sub(at)),
                latency.map_or(String::new(), |ms| format!(" ({} ms)", number(ms)))
            ),
            (None, _) => "not yet".to_owned(),
        },
        u.last_error.as_deref().map_or("–".to_owned(), |e| {
            format!("<span class=\"error\">{}</span>", escape(e))
        }),
        match u.ejected_until_unix_ms {
            Some(until) => format!(
                "{} (out for {})",
                u.ejections,
                age(until.saturating_sub(ctx.now_ms))
            ),
            None => u.ejections.to_string(),
        },
        if u.weight > 0.0 && u.weight < 1.0 {
            format!("{:.2} (slow start)", u.weight)
        } else {
            format!("{:.2}", u.weight)
        },
    ];
    for (label, cell) in COLUMNS.iter().zip(cells) {
        let _ = write!(html, "<td data-label=\"{label}\">{cell}</td>");
    }
    html.push_str("</tr>");
}

fn health_word(h: Health) -> &'static str {
    match h {
        Health::Up => "up",
        Health::Down => "down",
        Health::Unknown => "unknown",
    }
}

fn admin_word(a: AdminState) -> &'static str {
    match a {
        AdminState::Enabled => "enabled",
        AdminState::Draining => "draining",
        AdminState::Disabled => "disabled",
    }
}

/// A duration as a person reads it: `850 ms`, `12 s`, `4 min`, `3 h`.
fn age(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => format!("{} s", ms / 1000),
        120_000..7_200_000 => format!("{} min", ms / 60_000),
        _ => format!("{} h", ms / 3_600_000),
    }
}

/// A rate or time with the precision that matters: `0.25`, `3.4`, `1250`.
fn number(x: f64) -> String {
    if x == 0.0 {
        "0".to_owned()
    } else if x < 10.0 {
        format!("{x:.2}")
    } else if x < 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

/// Text as HTML: nothing a unit's error message holds can become markup.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page's only style: a table on wide screens, a card per unit on narrow ones.
const STYLE: &str = "\
:root{color-scheme:light dark;--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700;--muted:#6e7781}\
body{font:15px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;padding:1rem}\
h1{font-size:1.3rem;margin:0 0 .3rem}\
.summary{margin:.2rem 0;font-size:1.05rem}.summary.ok strong{color:var(--ok)}\
.summary.degraded strong{color:var(--warn)}.summary.down strong{color:var(--bad)}\
.meta{margin:.2rem 0 1rem;color:var(--muted);font-size:.85rem}\
table{border-collapse:collapse;width:100%}\
th,td{padding:.4rem .6rem;text-align:left;border-bottom:1px solid rgba(127,127,127,.3);vertical-align:top}\
th{font-size:.8rem;text-transform:uppercase;letter-spacing:.03em;color:var(--muted)}\
td{font-variant-numeric:tabular-nums}\
.name{font-weight:600;display:block}.addr{display:block;color:var(--muted);font-size:.8rem}\
.badge{display:inline-block;padding:0 .45rem;border-radius:.6rem;font-size:.8rem;font-weight:600;color:#fff;background:var(--muted)}\
.badge.up,.badge.enabled{background:var(--ok)}.badge.down{background:var(--bad)}\
.badge.draining{background:var(--warn)}\
tr.down td{background:rgba(207,34,46,.08)}\
.error{color:var(--bad);overflow-wrap:anywhere}\
@media (max-width:760px){\
table,thead,tbody,tr,td{display:block;width:auto}thead{display:none}\
tr{border:1px solid rgba(127,127,127,.35);border-radius:.5rem;margin:0 0 .8rem;padding:.3rem .6rem}\
td{display:flex;justify-content:space-between;gap:1rem;border:0;padding:.25rem 0}\
td::before{content:attr(data-label);color:var(--muted);font-size:.85rem;flex:none}\
td>*{text-align:right}td:first-child{display:block}td:first-child::before{content:none}\
}";

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(name: &str, state: Health) -> UnitStatus {
        UnitStatus {
            name: name.into(),
            address: "10.0.0.7:8080".into(),
            state,
            admin: AdminState::Enabled,
            last_check_unix_ms: Some(1_000_000 - 1_500),
            last_latency_ms: Some(0.42),
            consecutive_ok: 3,
            consecutive_fail: 0,
            in_flight: 2,
            tunnels: 0,
            requests: 100,
            requests_per_second: 12.5,
            answer_ms: Some(3.25),
            sessions: Some(40),
            warm_copies: Some(9),
            instance: Some("3841ea54-0a4d-49df-9637-c4cf7065f1d6".into()),
            ejected_until_unix_ms: None,
            ejections: 0,
            weight: 1.0,
            last_error: None,
        }
    }

    fn ctx() -> PageContext {
        PageContext {
            now_ms: 1_000_000,
            refresh_secs: DEFAULT_REFRESH_SECS,
        }
    }

    #[test]
    fn every_unit_has_a_row_with_its_figures_and_the_summary_adds_them_up() {
        let mut down = unit("web-1", Health::Down);
        down.last_error = Some("connect: connection refused".into());
        down.ejections = 2;
        down.ejected_until_unix_ms = Some(1_000_000 + 30_000);
        down.sessions = Some(2);
        let mut draining = unit("web-2", Health::Up);
        draining.admin = AdminState::Draining;
        draining.weight = 0.25;
        let page = render(&[unit("web-0", Health::Up), down, draining], &ctx());
        assert_eq!(page.matches("<tr class=").count(), 3);
        assert!(page.contains("<tr class=\"down\">"));
        assert!(page.contains(
            "<strong>2 of 3 units up</strong> · 6 in flight · 37.5 req/s · 82 sessions held"
        ));
        assert!(page.contains("class=\"summary degraded\""));
        assert!(page.contains("<span class=\"badge draining\">draining</span>"));
        assert!(page.contains("2 (out for 30 s)"));
        assert!(page.contains("0.25 (slow start)"));
        assert!(page.contains("1 s ago (0.42 ms)"));
        assert!(page.contains("3.25 ms"));
        assert!(page.contains(">3841ea54<"), "the short instance id");
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        for c in COLUMNS {
            assert!(page.contains(&format!("data-label=\"{c}\"")), "{c}");
        }
    }

    #[test]
    fn no_text_of_a_unit_becomes_markup() {
        let mut u = unit("web-0", Health::Down);
        u.last_error = Some("<script>alert(1)</script>\" onmouseover=\"x".into());
        u.address = "<img src=x>".into();
        let page = render(&[u], &ctx());
        assert!(!page.contains("<script"));
        assert!(!page.contains("<img"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot; onmouseover=&quot;x"));
    }

    #[test]
    fn an_empty_farm_and_no_refresh_say_so() {
        let page = render(
            &[],
            &PageContext {
                now_ms: 0,
                refresh_secs: 0,
            },
        );
        assert!(page.contains("No units yet"));
        assert!(page.contains("class=\"summary down\""));
        assert!(page.contains("does not refresh"));
        assert!(!page.contains("http-equiv"));
    }

    #[test]
    fn ages_and_numbers_read_at_a_glance() {
        assert_eq!(age(850), "850 ms");
        assert_eq!(age(12_400), "12 s");
        assert_eq!(age(300_000), "5 min");
        assert_eq!(age(10_800_000), "3 h");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(0.256), "0.26");
        assert_eq!(number(42.04), "42.0");
        assert_eq!(number(1250.4), "1250");
    }
}
