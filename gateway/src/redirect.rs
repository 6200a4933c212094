//! HTTP → HTTPS: with TLS on and `--redirect-listen`, the plain port's only answer is a `308`
//! to the same path and query over HTTPS (308 keeps the method and body, so a form posted to
//! the old address is not turned into a GET).
//!
//! The redirect names a configured public host whenever there is one, never a client's `Host`
//! then: a forged `Host` cannot make the gateway send clients elsewhere. Without public hosts
//! it names the request's own host, which only sends the client back where it already was.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;

use crate::proxy::route::request_host;

/// Where plain requests are sent.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// `host[:port]` clients reach the farm by (`--public-host`), lowercase.
    pub public_hosts: Vec<String>,
    /// The HTTPS port, unless the public host names one.
    pub port: u16,
}

impl Redirect {
    /// The HTTPS URL for a request to `host` (`host[:port]`) and `path_and_query`.
    pub fn location(&self, host: &str, path_and_query: &str) -> String {
        let name = host_name(host).to_ascii_lowercase();
        let authority = match self
            .public_hosts
            .iter()
            .find(|h| host_name(h) == name)
            .or(self.public_hosts.first())
        {
            Some(public) if public.contains(':') && !public.ends_with(']') => public.clone(),
            Some(public) => with_port(public, self.port),
            None => with_port(&name, self.port),
        };
        format!("https://{authority}{path_and_query}")
    }

    /// The answer to a plain request.
    pub fn answer<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let host = match request_host(req) {
            Ok(host) => host,
            Err(_) if !self.public_hosts.is_empty() => self.public_hosts[0].clone(),
            Err(reason) => return plain(StatusCode::BAD_REQUEST, reason),
        };
        let location = self.location(&host, path);
        let Ok(value) = HeaderValue::from_str(&location) else {
            return plain(StatusCode::BAD_REQUEST, "malformed request target");
        };
        let mut r = plain(StatusCode::PERMANENT_REDIRECT, "use HTTPS");
        r.headers_mut().insert(header::LOCATION, value);
        r
    }
}

/// `host` without its port (IPv6 literals keep their brackets).
fn host_name(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((name, port))
            if !port.is_empty()
                && port.bytes().all(|c| c.is_ascii_digit())
                && (!name.starts_with('[') || name.ends_with(']')) =>
        {
            name
        }
        _ => authority,
    }
}

fn with_port(name: &str, port: u16) -> String {
    if port == 443 {
        name.to_owned()
    } else {
        format!("{name}:{port}")
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(public: &[&str], port: u16) -> Redirect {
        Redirect {
            public_hosts: public.iter().map(|h| h.to_string()).collect(),
            port,
        }
    }

    #[test]
    fn without_public_hosts_the_request_host_gets_the_https_port() {
        let r = redirect(&[], 8443);
        assert_eq!(
            r.location("127.0.0.1:8080", "/cart?x=1"),
            "https://127.0.0.1:8443/cart?x=1"
        );
        assert_eq!(
            redirect(&[], 443).location("Shop.Example:80", "/"),
            "https://shop.example/"
        );
        assert_eq!(
            r.location("[::1]:8080", "/"),
            "https://[::1]:8443/",
            "an IPv6 literal keeps its brackets"
        );
    }

    #[test]
    fn a_public_host_wins_over_a_forged_host_and_keeps_its_own_port() {
        let r = redirect(&["shop.example", "www.shop.example:8443"], 443);
        assert_eq!(
            r.location("evil.example", "/login"),
            "https://shop.example/login"
        );
        assert_eq!(
            r.location("www.shop.example:80", "/"),
            "https://www.shop.example:8443/"
        );
    }

    #[test]
    fn the_answer_is_a_308_with_the_location() {
        let r = redirect(&[], 8443);
        let req = Request::post("/checkout")
            .header(header::HOST, "localhost:8080")
            .body(())
            .unwrap();
        let a = r.answer(&req);
        assert_eq!(a.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            a.headers()[header::LOCATION],
            "https://localhost:8443/checkout"
        );
        let no_host = Request::get("/").body(()).unwrap();
        assert_eq!(r.answer(&no_host).status(), StatusCode::BAD_REQUEST);
    }
}
