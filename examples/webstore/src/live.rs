//! The live cart badge: every page of a session opens a WebSocket (`GET /live`) on its unit,
//! and a cart change made in one tab updates the badge in the others without a reload.
//!
//! Only the news travels here, never the cart: the count comes from the session state in the
//! sidecar like everything else, so a tab that reconnects after its unit died (close code 1012)
//! reads the count on the backup. Pages work the same without the socket (the badge is
//! rendered with the page; `live.js` only keeps it fresh).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::broadcast;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::Shop;
use crate::state::{CART, Cart, Visit};

/// The script that keeps the badge fresh: connects to `<unit base>/live` (the base URL is on
/// `<body data-unit-url>`), sets `#cart-count` from each message, reconnects with a backoff
/// (after its unit died, the gateway sends the reconnect to the session's backup). The body's
/// `data-live` and `data-live-opens` say how the socket is doing.
pub const SCRIPT: &str = r#"(() => {
  const badge = document.getElementById("cart-count");
  if (!badge || !("WebSocket" in window)) return;
  const url = new URL(document.body.dataset.unitUrl + "/live", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  let delay = 500;
  const connect = () => {
    const ws = new WebSocket(url);
    ws.onopen = () => {
      delay = 500;
      document.body.dataset.live = "open";
      document.body.dataset.liveOpens = String(Number(document.body.dataset.liveOpens || 0) + 1);
    };
    ws.onmessage = (e) => {
      const news = JSON.parse(e.data);
      if (Number.isInteger(news.items)) badge.textContent = String(news.items);
    };
    ws.onclose = () => {
      document.body.dataset.live = "closed";
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    };
  };
  connect();
})();
"#;

/// News of cart changes for the sessions with an open socket on this unit.
#[derive(Default)]
pub struct CartNews {
    sessions: Mutex<HashMap<String, broadcast::Sender<u32>>>,
}

impl CartNews {
    /// Tells the open sockets of `session` its cart now holds `items`.
    pub fn publish(&self, session: &str, items: u32) {
        let mut sessions = self.sessions.lock().expect("cart news poisoned");
        if let Some(tx) = sessions.get(session)
            && tx.send(items).is_err()
        {
            // Nobody listens any more: forget the session.
            sessions.remove(session);
        }
    }

    /// Forgets `session` once none of its sockets is open.
    pub fn release(&self, session: &str) {
        let mut sessions = self.sessions.lock().expect("cart news poisoned");
        if sessions
            .get(session)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            sessions.remove(session);
        }
    }

    /// News for `session` from now on.
    pub fn subscribe(&self, session: &str) -> broadcast::Receiver<u32> {
        let mut sessions = self.sessions.lock().expect("cart news poisoned");
        sessions
            .entry(session.to_owned())
            .or_insert_with(|| broadcast::channel(16).0)
            .subscribe()
    }
}

/// Items in a cart, for the badge.
pub fn item_count(cart: &Cart) -> u32 {
    cart.0.values().fold(0u32, |n, q| n.saturating_add(*q))
}

/// `GET /live.js`.
pub async fn script() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
        ],
        SCRIPT,
    )
        .into_response()
}

/// `GET /live`: the WebSocket handshake (RFC 6455 §4.2.2), then the cart's item count now and
/// after every change.
pub async fn socket(State(shop): State<Arc<Shop>>, mut req: Request) -> Response {
    let v = match Visit::from_headers(req.headers()) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let h = req.headers();
    let asks = h
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let key = match h.get(header::SEC_WEBSOCKET_KEY) {
        Some(key)
            if asks
                && h.get(header::SEC_WEBSOCKET_VERSION)
                    .is_some_and(|v| v == "13") =>
        {
            key
        }
        _ => {
            return (
                StatusCode::UPGRADE_REQUIRED,
                [(header::UPGRADE, "websocket")],
                "this address is a WebSocket (version 13)\n",
            )
                .into_response();
        }
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let news = shop.news.subscribe(&v.session);
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        match shop.sessions.read::<Cart>(&v, CART).await {
            Ok((cart, _)) => serve(ws, item_count(&cart), news).await,
            Err(e) => {
                tracing::info!(error = %e, "live cart: cannot read the cart");
                drop(news);
            }
        }
        shop.news.release(&v.session);
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
            ),
        ],
    )
        .into_response()
}

/// Sends the count now and on every change until the client goes or closes.
async fn serve<S>(mut ws: WebSocketStream<S>, now: u32, mut news: broadcast::Receiver<u32>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let message = |items: u32| Message::text(format!("{{\"items\":{items}}}"));
    if ws.send(message(now)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            changed = news.recv() => match changed {
                Ok(items) => {
                    if ws.send(message(items)).await.is_err() {
                        return;
                    }
                }
                // Missed some: the latest is what counts, and it comes next.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            incoming = ws.next() => match incoming {
                // The client says nothing the badge needs; pings are answered by tungstenite.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    let _ = ws.flush().await;
                    return;
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn news_reaches_every_tab_of_the_session_and_no_other() {
        let news = CartNews::default();
        let (mut tab1, mut tab2) = (news.subscribe("s-1"), news.subscribe("s-1"));
        let mut other = news.subscribe("s-2");
        news.publish("s-1", 3);
        assert_eq!(tab1.try_recv().unwrap(), 3);
        assert_eq!(tab2.try_recv().unwrap(), 3);
        assert!(other.try_recv().is_err());
        // A session whose sockets all closed is forgotten.
        drop(tab1);
        news.release("s-1");
        assert!(
            news.sessions.lock().unwrap().contains_key("s-1"),
            "tab 2 is open"
        );
        drop(tab2);
        news.release("s-1");
        assert!(!news.sessions.lock().unwrap().contains_key("s-1"));
    }

    #[test]
    fn the_badge_counts_items_not_lines() {
        let mut cart = Cart::default();
        cart.0.insert("tea".into(), 2);
        cart.0.insert("mug".into(), 3);
        assert_eq!(item_count(&cart), 5);
    }
}
