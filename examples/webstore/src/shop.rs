//! The catalog and the orders (the only thing the shop stores itself, in PostgreSQL).

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::state::Cart;

/// One product.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Product {
    /// Stock keeping unit.
    pub sku: &'static str,
    /// Name.
    pub name: &'static str,
    /// Price in cents.
    pub price_cents: u64,
    /// Description.
    pub description: &'static str,
}

/// The catalog.
pub const CATALOG: &[Product] = &[
    Product {
        sku: "apple",
        name: "Apples (1 kg)",
        price_cents: 349,
        description: "Crisp orchard apples.",
    },
    Product {
        sku: "bread",
        name: "Sourdough bread",
        price_cents: 450,
        description: "Baked this morning.",
    },
    Product {
        sku: "cheese",
        name: "Mountain cheese (250 g)",
        price_cents: 699,
        description: "Aged twelve months.",
    },
    Product {
        sku: "coffee",
        name: "Coffee beans (500 g)",
        price_cents: 1290,
        description: "Medium roast.",
    },
    Product {
        sku: "honey",
        name: "Forest honey",
        price_cents: 875,
        description: "From a local beekeeper.",
    },
    Product {
        sku: "tea",
        name: "Green tea (100 g)",
        price_cents: 590,
        description: "First flush.",
    },
];

/// Largest quantity of one product in a cart.
pub const MAX_QTY: u32 = 99;

/// Why a cart cannot be ordered.
pub fn check_cart(cart: &Cart) -> Result<(), String> {
    if cart.0.is_empty() {
        return Err("the cart is empty".into());
    }
    for (sku, qty) in &cart.0 {
        if product(sku).is_none() {
            return Err(format!("no product {sku:?} in the catalog"));
        }
        if !(1..=MAX_QTY).contains(qty) {
            return Err(format!(
                "{qty} × {sku}: a quantity must be between 1 and {MAX_QTY}"
            ));
        }
    }
    Ok(())
}

/// A product by SKU.
pub fn product(sku: &str) -> Option<&'static Product> {
    CATALOG.iter().find(|p| p.sku == sku)
}

/// Total of a cart in cents.
pub fn total_cents(cart: &Cart) -> u64 {
    cart.0
        .iter()
        .filter_map(|(sku, qty)| {
            product(sku).map(|p| p.price_cents.saturating_mul(u64::from(*qty)))
        })
        .fold(0, u64::saturating_add)
}

/// Creates the order tables once, even when many shops start at once.
pub async fn prepare(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(7197548)")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS webstore_orders (
            id           bigserial PRIMARY KEY,
            checkout_key text NOT NULL UNIQUE,
            session_ref  text NOT NULL,
            customer     text,
            unit         text NOT NULL,
            total_cents  bigint NOT NULL,
            created_at   timestamptz NOT NULL DEFAULT now()
        );
        -- Orders made by earlier versions named their session by its id, a bearer credential:
        -- they now hold its digest (session_ref), like every new order.
        DO $$ BEGIN
          IF EXISTS (SELECT 1 FROM information_schema.columns
                      WHERE table_name = 'webstore_orders' AND column_name = 'session_id') THEN
            ALTER TABLE webstore_orders RENAME COLUMN session_id TO session_ref;
            UPDATE webstore_orders
               SET session_ref = encode(sha256(convert_to(session_ref, 'UTF8')), 'hex'),
                   checkout_key = encode(sha256(convert_to(split_part(checkout_key, ':', 1), 'UTF8')), 'hex')
                                  || substr(checkout_key, strpos(checkout_key, ':'));
          END IF;
        END $$;
        CREATE TABLE IF NOT EXISTS webstore_order_items (
            order_id    bigint NOT NULL REFERENCES webstore_orders (id) ON DELETE CASCADE,
            sku         text NOT NULL,
            qty         integer NOT NULL CHECK (qty > 0),
            price_cents bigint NOT NULL,
            PRIMARY KEY (order_id, sku)
        );",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// A placed order.
#[derive(Debug, Clone, Serialize)]
pub struct Order {
    /// Order number.
    pub id: i64,
    /// SKU → quantity.
    pub items: BTreeMap<String, u32>,
    /// Total in cents.
    pub total_cents: u64,
}

/// How orders name their session: the SHA-256 of its id, in hex. The id is a bearer
/// credential and is never stored; the digest only links a session's orders together.
pub fn session_ref(session: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(session.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What makes a checkout happen once: the client's `Idempotency-Key` when it sent one (scoped
/// to its session), otherwise the cart version it checked out.
pub fn checkout_key(session: &str, idempotency_key: Option<&str>, cart_version: u64) -> String {
    let session = session_ref(session);
    match idempotency_key {
        Some(k) => format!("{session}:key:{k}"),
        None => format!("{session}:{cart_version}"),
    }
}

/// The order a checkout key already made, if any.
pub async fn order_by_key(pool: &PgPool, key: &str) -> Result<Option<Order>, sqlx::Error> {
    let id: Option<i64> =
        sqlx::query_scalar("SELECT id FROM webstore_orders WHERE checkout_key = $1")
            .bind(key)
            .fetch_optional(pool)
            .await?;
    match id {
        Some(id) => Ok(Some(order(pool, id).await?)),
        None => Ok(None),
    }
}

/// Records an order for `cart` under `key`, exactly once: a retried checkout with the same key
/// finds the order it already made. The cart must pass [`check_cart`].
pub async fn place_order(
    pool: &PgPool,
    key: &str,
    session: &str,
    cart: &Cart,
    customer: Option<&str>,
    unit: &str,
) -> Result<Order, sqlx::Error> {
    let total = total_cents(cart);
    let mut tx = pool.begin().await?;
    let created: Option<i64> = sqlx::query_scalar(
        "INSERT INTO webstore_orders (checkout_key, session_ref, customer, unit, total_cents)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (checkout_key) DO NOTHING RETURNING id",
    )
    .bind(key)
    .bind(session_ref(session))
    .bind(customer)
    .bind(unit)
    .bind(total as i64)
    .fetch_optional(&mut *tx)
    .await?;
    let id = match created {
        Some(id) => {
            for (sku, qty) in &cart.0 {
                let price = product(sku).map_or(0, |p| p.price_cents);
                sqlx::query(
                    "INSERT INTO webstore_order_items (order_id, sku, qty, price_cents) VALUES ($1, $2, $3, $4)",
                )
                .bind(id)
                .bind(sku)
                .bind(*qty as i32)
                .bind(price as i64)
                .execute(&mut *tx)
                .await?;
            }
            id
        }
        None => {
            sqlx::query_scalar("SELECT id FROM webstore_orders WHERE checkout_key = $1")
                .bind(key)
                .fetch_one(&mut *tx)
                .await?
        }
    };
    tx.commit().await?;
    order(pool, id).await
}

/// An order by number.
pub async fn order(pool: &PgPool, id: i64) -> Result<Order, sqlx::Error> {
    let rows =
        sqlx::query("SELECT sku, qty FROM webstore_order_items WHERE order_id = $1 ORDER BY sku")
            .bind(id)
            .fetch_all(pool)
            .await?;
    let items: BTreeMap<String, u32> = rows
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i32, _>(1) as u32))
        .collect();
    let total: i64 = sqlx::query_scalar("SELECT total_cents FROM webstore_orders WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await?;
    Ok(Order {
        id,
        items,
        total_cents: total as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_named_by_their_sha256() {
        // FIPS 180-2's "abc" vector.
        assert_eq!(
            session_ref("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let key = checkout_key("AAAAAAAAAAAAAAAAAAAAAQ", Some("k"), 0);
        assert!(!key.contains("AAAAAAAAAAAAAAAAAAAAAQ"), "{key}");
    }
}
