//! The order tables against real PostgreSQL.

use stickyfarm_testkit::TestDb;
use stickyfarm_webstore::shop::{checkout_key, prepare, session_ref};

/// Orders never hold a session id (a bearer credential), only its digest; orders an earlier
/// version stored under the raw id are rewritten to the same digest the code computes now, so
/// a retried checkout still finds them.
#[tokio::test]
async fn orders_name_their_session_by_digest_and_old_ones_are_rewritten() {
    let db = TestDb::new().await;
    let raw = "AAAAAAAAAAAAAAAAAAAAAQ";
    sqlx::raw_sql(
        "CREATE TABLE webstore_orders (
            id bigserial PRIMARY KEY, checkout_key text NOT NULL UNIQUE,
            session_id text NOT NULL, customer text, unit text NOT NULL,
            total_cents bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO webstore_orders (checkout_key, session_id, unit, total_cents)
         VALUES ('AAAAAAAAAAAAAAAAAAAAAQ:key:k-1', 'AAAAAAAAAAAAAAAAAAAAAQ', 'web-0', 100),
                ('AAAAAAAAAAAAAAAAAAAAAQ:7', 'AAAAAAAAAAAAAAAAAAAAAQ', 'web-0', 200);",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    prepare(&db.pool).await.unwrap();
    prepare(&db.pool).await.unwrap(); // idempotent: every unit runs it at start

    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT checkout_key, session_ref FROM webstore_orders ORDER BY total_cents",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let digest = session_ref(raw);
    assert_eq!(digest.len(), 64);
    assert_eq!(
        rows,
        [
            (checkout_key(raw, Some("k-1"), 0), digest.clone()),
            (checkout_key(raw, None, 7), digest)
        ]
    );
    assert!(
        rows.iter()
            .all(|(k, s)| !k.contains(raw) && !s.contains(raw))
    );
}
