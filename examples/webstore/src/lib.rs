//! A small but real shop behind the Stickyfarm sidecar: catalog, product pages, a cart,
//! sign-in and checkout. The cart and the sign-in live in the sidecar's session state (so any
//! unit can continue a session); only orders are the shop's own rows in PostgreSQL. Every link
//! is built from the unit base URL the sidecar passes, and every page says which unit served it.

pub mod live;
pub mod shop;
pub mod state;

use std::sync::Arc;

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;

use crate::shop::{CATALOG, MAX_QTY, check_cart, product, total_cents};
use crate::state::{CART, Cart, LOGIN, Login, SessionApi, StateError, Visit};

/// Shared state of the shop.
pub struct Shop {
    /// The sidecar's session API.
    pub sessions: SessionApi,
    /// Orders.
    pub db: PgPool,
    /// Cart changes, for the live badge of the session's other tabs.
    pub news: live::CartNews,
}

/// The shop's routes.
pub fn router(shop: Arc<Shop>) -> Router {
    Router::new()
        .route("/", get(catalog_page))
        .route("/product/{sku}", get(product_page))
        .route("/cart", get(cart_page))
        .route("/cart/add", post(cart_add_form))
        .route("/cart/set", post(cart_set_form))
        .route("/checkout", post(checkout_form))
        .route("/login", post(login_form))
        .route("/logout", post(logout_form))
        .route("/api/whoami", get(api_whoami))
        .route("/api/cart", get(api_cart))
        .route("/api/cart/items", post(api_add))
        .route("/api/cart/items/{sku}", put(api_set).delete(api_remove))
        .route("/api/checkout", post(api_checkout))
        .route("/live", get(live::socket))
        .route("/live.js", get(live::script))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(shop)
}

/// An error page or JSON error.
pub struct ShopError(StatusCode, String);

impl IntoResponse for ShopError {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        r
    }
}

impl From<StateError> for ShopError {
    fn from(e: StateError) -> Self {
        let status = match e {
            StateError::NoSession => StatusCode::BAD_REQUEST,
            StateError::Unavailable | StateError::Contended => StatusCode::SERVICE_UNAVAILABLE,
            StateError::Api(_) => StatusCode::BAD_GATEWAY,
        };
        ShopError(status, e.to_string())
    }
}

impl From<sqlx::Error> for ShopError {
    fn from(e: sqlx::Error) -> Self {
        // A constraint the order broke is about what the client sent: its answer says which,
        // and it is never a reason to take the unit out of service.
        if let Some(db) = e.as_database_error()
            && !matches!(db.kind(), sqlx::error::ErrorKind::Other)
        {
            tracing::info!(error = %db, "an order broke a database constraint");
            return ShopError(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "the order was refused: {}",
                    db.constraint().unwrap_or("a database constraint")
                ),
            );
        }
        tracing::warn!(error = %e, "order database failed");
        ShopError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the order database is unavailable; nothing was charged, retry shortly".into(),
        )
    }
}

fn bad_sku(sku: &str) -> ShopError {
    ShopError(
        StatusCode::BAD_REQUEST,
        format!("no product {sku:?} in the catalog"),
    )
}

/// A quantity a client asked for: at most [`MAX_QTY`] (0 removes a line where that is allowed).
fn quantity(qty: u32) -> Result<u32, ShopError> {
    if qty > MAX_QTY {
        return Err(ShopError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("quantity {qty} is over the limit of {MAX_QTY} per product"),
        ));
    }
    Ok(qty)
}

fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// What every page shows of the session: who is signed in and how full the cart is.
struct Header {
    login: Login,
    items: u32,
}

fn page(v: &Visit, header: &Header, title: &str, body: &str) -> Html<String> {
    let base = attr(&v.base);
    let login = &header.login;
    let who = if login.name.is_empty() {
        format!(
            r#"<form method="post" action="{base}/login">Sign in as <input name="name" required maxlength="40"> <button>Sign in</button></form>"#
        )
    } else {
        format!(
            r#"<form method="post" action="{base}/logout">Signed in as <b>{}</b> <button>Sign out</button></form>"#,
            text(&login.name)
        )
    };
    Html(format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>{title} · Stickyfarm Webstore</title>
<style>body{{font-family:sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem}}
header{{display:flex;justify-content:space-between;align-items:center;border-bottom:1px solid #ccc}}
.unit{{background:#eef;padding:.3rem .6rem;border-radius:.3rem}} table{{border-collapse:collapse}} td,th{{padding:.3rem .8rem}}</style>
</head><body data-unit-url="{base}"><header><h1><a href="{base}/">Stickyfarm Webstore</a></h1>
<div><span class="unit" id="served-by">Served by unit <b>{unit}</b> (instance {instance})</span> · <a href="{base}/cart">Cart (<span id="cart-count">{items}</span>)</a></div></header>
{who}<main><h2>{title}</h2>{body}</main><script src="{base}/live.js" defer></script></body></html>"#,
        items = header.items,
        title = text(title),
        unit = text(&v.unit),
        instance = text(v.instance.get(..8).unwrap_or(&v.instance)),
    ))
}

/// The visit and what its page header shows (from the snapshot the sidecar attached, so
/// usually without a round trip).
async fn visit_with_header(shop: &Shop, h: &HeaderMap) -> Result<(Visit, Header), ShopError> {
    let v = Visit::from_headers(h)?;
    let (login, _) = shop.sessions.read::<Login>(&v, LOGIN).await?;
    let (cart, _) = shop.sessions.read::<Cart>(&v, CART).await?;
    let items = live::item_count(&cart);
    Ok((v, Header { login, items }))
}

async fn catalog_page(
    State(shop): State<Arc<Shop>>,
    h: HeaderMap,
) -> Result<Html<String>, ShopError> {
    let (v, header) = visit_with_header(&shop, &h).await?;
    let base = attr(&v.base);
    let rows: String = CATALOG
        .iter()
        .map(|p| {
            format!(
                r#"<tr><td><a href="{base}/product/{sku}">{name}</a></td><td>{price}</td><td><form method="post" action="{base}/cart/add"><input type="hidden" name="sku" value="{sku}"><input type="hidden" name="qty" value="1"><button>Add to cart</button></form></td></tr>"#,
                sku = p.sku,
                name = text(p.name),
                price = money(p.price_cents)
            )
        })
        .collect();
    Ok(page(
        &v,
        &header,
        "Catalog",
        &format!("<table>{rows}</table>"),
    ))
}

async fn product_page(
    State(shop): State<Arc<Shop>>,
    Path(sku): Path<String>,
    h: HeaderMap,
) -> Result<Html<String>, ShopError> {
    let (v, header) = visit_with_header(&shop, &h).await?;
    let p = product(&sku).ok_or_else(|| bad_sku(&sku))?;
    let base = attr(&v.base);
    let body = format!(
        r#"<p>{desc}</p><p>Price: {price}</p><form method="post" action="{base}/cart/add"><input type="hidden" name="sku" value="{sku}">Quantity <input name="qty" type="number" min="1" max="{MAX_QTY}" value="1"> <button>Add to cart</button></form>"#,
        desc = text(p.description),
        price = money(p.price_cents),
        sku = p.sku
    );
    Ok(page(&v, &header, p.name, &body))
}

async fn cart_page(State(shop): State<Arc<Shop>>, h: HeaderMap) -> Result<Html<String>, ShopError> {
    let (v, header) = visit_with_header(&shop, &h).await?;
    let (cart, _) = shop.sessions.read::<Cart>(&v, CART).await?;
    let base = attr(&v.base);
    if cart.0.is_empty() {
        return Ok(page(
            &v,
            &header,
            "Your cart",
            &format!(r#"<p>Your cart is empty. <a href="{base}/">Shop on</a>.</p>"#),
        ));
    }
    let rows: String = cart
        .0
        .iter()
        .filter_map(|(sku, qty)| product(sku).map(|p| (p, qty)))
        .map(|(p, qty)| {
            format!(
                r#"<tr><td>{name}</td><td><form method="post" action="{base}/cart/set"><input type="hidden" name="sku" value="{sku}"><input name="qty" type="number" min="0" max="{MAX_QTY}" value="{qty}"> <button>Update</button></form></td><td>{line}</td><td><form method="post" action="{base}/cart/set"><input type="hidden" name="sku" value="{sku}"><input type="hidden" name="qty" value="0"><button>Remove</button></form></td></tr>"#,
                name = text(p.name),
                sku = p.sku,
                line = money(p.price_cents * u64::from(*qty))
            )
        })
        .collect();
    let body = format!(
        r#"<table>{rows}<tr><th>Total</th><td></td><th>{total}</th></tr></table><form method="post" action="{base}/checkout"><button>Check out</button></form>"#,
        total = money(total_cents(&cart))
    );
    Ok(page(&v, &header, "Your cart", &body))
}

#[derive(Deserialize)]
struct LineForm {
    sku: String,
    qty: u32,
}

async fn change_cart(
    shop: &Shop,
    v: &Visit,
    sku: &str,
    change: impl Fn(&mut Cart),
) -> Result<(Cart, u64), ShopError> {
    product(sku).ok_or_else(|| bad_sku(sku))?;
    let (cart, version) = shop.sessions.update::<Cart, _>(v, CART, change).await?;
    shop.news.publish(&v.session, live::item_count(&cart));
    Ok((cart, version))
}

/// Adds to a line; the line never goes past [`MAX_QTY`] whatever the cart held before.
fn add(cart: &mut Cart, sku: &str, qty: u32) {
    let line = cart.0.entry(sku.to_owned()).or_default();
    *line = line.saturating_add(qty).min(MAX_QTY);
}

fn set(cart: &mut Cart, sku: &str, qty: u32) {
    if qty == 0 {
        cart.0.remove(sku);
    } else {
        cart.0.insert(sku.to_owned(), qty.min(MAX_QTY));
    }
}

async fn cart_add_form(
    State(shop): State<Arc<Shop>>,
    h: HeaderMap,
    Form(f): Form<LineForm>,
) -> Result<Redirect, ShopError> {
    let v = Visit::from_headers(&h)?;
    let qty = quantity(f.qty)?.max(1);
    change_cart(&shop, &v, &f.sku, |c| add(c, &f.sku, qty)).await?;
    Ok(Redirect::to(&format!("{}/cart", v.base)))
}

async fn cart_set_form(
    State(shop): State<Arc<Shop>>,
    h: HeaderMap,
    Form(f): Form<LineForm>,
) -> Result<Redirect, ShopError> {
    let v = Visit::from_headers(&h)?;
    let qty = quantity(f.qty)?;
    change_cart(&shop, &v, &f.sku, |c| set(c, &f.sku, qty)).await?;
    Ok(Redirect::to(&format!("{}/cart", v.base)))
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
}

async fn login_form(
    State(shop): State<Arc<Shop>>,
    h: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Result<Redirect, ShopError> {
    let mut v = Visit::from_headers(&h)?;
    let name: String = f.name.trim().chars().take(40).collect();
    if name.is_empty() {
        return Err(ShopError(
            StatusCode::BAD_REQUEST,
            "a name is needed to sign in".into(),
        ));
    }
    // A new id for the signed-in session: one planted or seen before sign-in is worthless.
    shop.sessions.rotate(&mut v).await?;
    shop.sessions
        .update::<Login, _>(&v, LOGIN, |l| l.name = name.clone())
        .await?;
    Ok(Redirect::to(&format!("{}/", v.base)))
}

async fn logout_form(State(shop): State<Arc<Shop>>, h: HeaderMap) -> Result<Redirect, ShopError> {
    let mut v = Visit::from_headers(&h)?;
    shop.sessions.rotate(&mut v).await?;
    shop.sessions
        .update::<Login, _>(&v, LOGIN, |l| l.name.clear())
        .await?;
    Ok(Redirect::to(&format!("{}/", v.base)))
}

/// The client's `Idempotency-Key`: 1 to 64 visible ASCII characters, or a 400.
fn idempotency_key(h: &HeaderMap) -> Result<Option<String>, ShopError> {
    let Some(v) = h.get("idempotency-key") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .filter(|k| (1..=64).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .map(|k| Some(k.to_owned()))
        .ok_or_else(|| {
            ShopError(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key must be 1 to 64 visible ASCII characters".into(),
            )
        })
}

/// Places the order for the cart as it is now, then empties the cart if nobody changed it
/// meanwhile. Retrying the same checkout returns the same order: with an `Idempotency-Key`
/// even after the first attempt emptied the cart (its answer was lost on the way).
async fn checkout(shop: &Shop, v: &Visit, key: Option<&str>) -> Result<shop::Order, ShopError> {
    if let Some(k) = key
        && let Some(order) =
            shop::order_by_key(&shop.db, &shop::checkout_key(&v.session, Some(k), 0)).await?
    {
        return Ok(order);
    }
    let (cart, version) = shop.sessions.read::<Cart>(v, CART).await?;
    // A cart the shop cannot order (empty, or lines no current page could have made) is the
    // client's to fix: 4xx with the reason, never a database error.
    check_cart(&cart).map_err(|why| ShopError(StatusCode::BAD_REQUEST, why))?;
    let (login, _) = shop.sessions.read::<Login>(v, LOGIN).await?;
    let customer = (!login.name.is_empty()).then_some(login.name.as_str());
    let checkout_key = shop::checkout_key(&v.session, key, version);
    let order = shop::place_order(
        &shop.db,
        &checkout_key,
        &v.session,
        &cart,
        customer,
        &v.unit,
    )
    .await?;
    shop.sessions
        .replace_if(v, CART, &Cart::default(), version)
        .await?;
    shop.news.publish(&v.session, 0);
    Ok(order)
}

async fn checkout_form(
    State(shop): State<Arc<Shop>>,
    h: HeaderMap,
) -> Result<Html<String>, ShopError> {
    let v = Visit::from_headers(&h)?;
    let order = checkout(&shop, &v, idempotency_key(&h)?.as_deref()).await?;
    let (login, _) = shop.sessions.read::<Login>(&v, LOGIN).await?;
    // The cart was just emptied by the order.
    let header = Header { login, items: 0 };
    let lines: String = order
        .items
        .iter()
        .map(|(sku, qty)| {
            format!(
                "<li>{qty} × {}</li>",
                text(product(sku).map_or(sku.as_str(), |p| p.name))
            )
        })
        .collect();
    let body = format!(
        r#"<p id="order">Order <b>#{id}</b> is confirmed: total {total}.</p><ul>{lines}</ul><p><a href="{base}/">Shop on</a></p>"#,
        id = order.id,
        total = money(order.total_cents),
        base = attr(&v.base)
    );
    Ok(page(&v, &header, "Thank you", &body))
}

fn cart_json(v: &Visit, cart: &Cart, version: u64) -> Json<serde_json::Value> {
    Json(json!({
        "items": cart.0, "version": version, "total_cents": total_cents(cart),
        "unit": v.unit, "unit_url": v.base, "session": v.session,
    }))
}

async fn api_whoami(h: HeaderMap) -> Result<Json<serde_json::Value>, ShopError> {
    let v = Visit::from_headers(&h)?;
    Ok(Json(
        json!({ "unit": v.unit, "unit_url": v.base, "instance": v.instance, "session": v.session }),
    ))
}

async fn api_cart(
    State(shop): State<Arc<Shop>>,
    h: HeaderMap,
) -> Result<Json<serde_json::Value>, ShopError> {
    let v = Visit::from_headers(&h)?;
    let (cart, version) = shop.sessions.read::<Cart>(&v, CART).await?;
    Ok(cart_json(&v, &cart, version))
}

#[derive(Deserialize)]
struct AddLine {
    sku: String,
    qty: u32,
}

async fn api_add(
    State(shop): State<Arc<Shop>>,
    h: HeaderMap,
    Json(l): Json<AddLine>,
) -> Result<Json<serde_json::Value>, ShopError> {
    let v = Visit::from_headers(&h)?;
    let qty = quantity(l.qty)?.max(1);
    let (cart, version) = change_cart(&shop, &v, &l.sku, |c| add(c, &l.sku, qty)).await?;
    Ok(cart_json(&v, &cart, version))
}

#[derive(Deserialize)]
struct SetQty {
    qty: u32,
}

/// Sets a line's quantity: idempotent, so a client may safely retry it.
async fn api_set(
    State(shop): State<Arc<Shop>>,
    Path(sku): Path<String>,
    h: HeaderMap,
    Json(q): Json<SetQty>,
) -> Result<Json<serde_json::Value>, ShopError> {
    let v = Visit::from_headers(&h)?;
    let qty = quantity(q.qty)?;
    let (cart, version) = change_cart(&shop, &v, &sku, |c| set(c, &sku, qty)).await?;
    Ok(cart_json(&v, &cart, version))
}

async fn api_remove(
    State(shop): State<Arc<Shop>>,
    Path(sku): Path<String>,
    h: HeaderMap,
) -> Result<Json<serde_json::Value>, ShopError> {
    let v = Visit::from_headers(&h)?;
    let (cart, version) = change_cart(&shop, &v, &sku, |c| set(c, &sku, 0)).await?;
    Ok(cart_json(&v, &cart, version))
}

async fn api_checkout(
    State(shop): State<Arc<Shop>>,
    h: HeaderMap,
) -> Result<Json<shop::Order>, ShopError> {
    let v = Visit::from_headers(&h)?;
    Ok(Json(
        checkout(&shop, &v, idempotency_key(&h)?.as_deref()).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_bounded_and_never_wrap() {
        let mut cart = Cart::default();
        add(&mut cart, "tea", 1);
        add(&mut cart, "tea", MAX_QTY);
        assert_eq!(cart.0["tea"], MAX_QTY);
        cart.0.insert("tea".into(), u32::MAX);
        add(&mut cart, "tea", u32::MAX);
        assert_eq!(cart.0["tea"], MAX_QTY, "a saturated line, not a wrapped 0");
        set(&mut cart, "tea", 0);
        assert!(!cart.0.contains_key("tea"));
        assert!(quantity(MAX_QTY).is_ok());
        let refused = quantity(u32::MAX).err().unwrap();
        assert_eq!(refused.0, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(refused.1.contains("limit of 99"), "{}", refused.1);
    }

    #[test]
    fn only_carts_a_shopper_could_make_are_ordered() {
        let cart =
            |lines: &[(&str, u32)]| Cart(lines.iter().map(|(s, q)| (s.to_string(), *q)).collect());
        assert!(check_cart(&cart(&[("tea", 2), ("apple", MAX_QTY)])).is_ok());
        assert_eq!(check_cart(&cart(&[])).unwrap_err(), "the cart is empty");
        assert!(
            check_cart(&cart(&[("tea", 0)]))
                .unwrap_err()
                .contains("between 1 and 99")
        );
        assert!(
            check_cart(&cart(&[("tea", 100)]))
                .unwrap_err()
                .contains("between 1 and 99")
        );
        assert!(
            check_cart(&cart(&[("caviar", 1)]))
                .unwrap_err()
                .contains("caviar")
        );
        assert_eq!(
            total_cents(&cart(&[("coffee", u32::MAX)])),
            1290 * u64::from(u32::MAX)
        );
    }
}
