//! Failed-over sessions' generation checks against real PostgreSQL: correct answers, one
//! connection of their own, many checks to a statement, and a connection PostgreSQL closed is
//! replaced without a wrong answer.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use stickyfarm_api::metrics::sample_sum;
use stickyfarm_api::{SessionId, SessionIdKey, StoredId, TableName};
use stickyfarm_sidecar::generations::APPLICATION_NAME;
use stickyfarm_sidecar::metrics::Metrics;
use stickyfarm_sidecar::store::{Expiry, Store, StoreError, StoreOptions, WriteCondition};
use stickyfarm_testkit::{SESSION_ID_KEY, TestDb};

/// A counter of the store's, by operation: `queries` or `errors`.
fn db_counter(metrics: &Metrics, kind: &str, op: &str) -> u64 {
    sample_sum(
        &metrics.encode(),
        &format!("stickyfarm_sidecar_db_{kind}_total"),
        &format!("op=\"{op}\""),
    ) as u64
}

/// The store's count of generation statements on the checks' connection.
fn generation_statements(metrics: &Metrics) -> u64 {
    db_counter(metrics, "queries", "generations")
}

fn store_at(url: &str, acquire_timeout: Duration, metrics: Arc<Metrics>) -> Store {
    Store::connect_lazy(
        PgConnectOptions::from_str(url).unwrap(),
        &StoreOptions {
            max_connections: 4,
            acquire_timeout,
            expiry: Expiry {
                idle: Duration::from_secs(3600),
                absolute: Duration::from_secs(86_400),
            },
        },
        metrics,
    )
}

async fn checks_connections(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = $2",
    )
    .bind(APPLICATION_NAME)
    .bind(&db.name)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// Checks every id at once and returns the answers in order.
async fn check_all(store: &Store, ids: &[StoredId]) -> Vec<Option<u64>> {
    futures::future::join_all(ids.iter().map(|id| store.generation(*id)))
        .await
        .into_iter()
        .map(|r| r.expect("a generation check failed"))
        .collect()
}

// One thread: every check of a burst is queued before the checking task runs, so how many
// statements they took is exact.
#[tokio::test(flavor = "current_thread")]
async fn a_burst_of_checks_is_answered_on_one_connection_in_one_statement() {
    let db = TestDb::new().await;
    let metrics = Arc::new(Metrics::new());
    let store = store_at(&db.url, Duration::from_secs(5), metrics.clone());
    let key = SessionIdKey::new(SESSION_ID_KEY.as_bytes());
    store.migrate(&key).await.unwrap();

    // Twenty sessions written 1 to 4 times (so generations differ), twenty never stored.
    let cart = TableName::from_str("cart").unwrap();
    let mut ids = Vec::new();
    let mut expected = Vec::new();
    for i in 0..20u64 {
        let id = key.stored(&SessionId::generate());
        assert!(store.create_session(id, "test").await.unwrap());
        let mut generation = 0;
        for n in 0..=(i % 4) {
            let c = store
                .write_table(
                    id,
                    &cart,
                    &format!("{{\"n\":{n}}}"),
                    WriteCondition::Unconditional,
                    None,
                )
                .await
                .unwrap();
            generation = c.generation;
        }
        ids.push(id);
        expected.push(Some(generation));
    }
    for _ in 0..20 {
        ids.push(key.stored(&SessionId::generate()));
        expected.push(None);
    }
    let generations: Vec<Option<u64>> = sqlx::query_scalar(
        "SELECT generation FROM stickyfarm_sessions WHERE id = ANY($1) ORDER BY array_position($1, id)",
    )
    .bind(ids[..20].iter().map(|id| id.as_uuid()).collect::<Vec<_>>())
    .fetch_all(&db.pool)
    .await
    .map(|g: Vec<i64>| g.into_iter().map(|g| Some(g as u64)).collect())
    .unwrap();
    assert_eq!(generations, expected[..20], "the test's own bookkeeping");

    let before = generation_statements(&metrics);
    assert_eq!(check_all(&store, &ids).await, expected);
    assert_eq!(
        generation_statements(&metrics) - before,
        1,
        "forty checks queued together take one statement"
    );
    assert_eq!(checks_connections(&db).await, 1);

    // PostgreSQL closes the checks' connection (a restart, an administrator): the next checks
    // fail once on it, get a fresh one, and still answer right.
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND datname = $2",
    )
    .bind(APPLICATION_NAME)
    .bind(&db.name)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(terminated, [true]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while checks_connections(&db).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backend did not end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(check_all(&store, &ids).await, expected);
    assert_eq!(checks_connections(&db).await, 1);
}

#[tokio::test]
async fn an_unreachable_postgres_is_reported_once_not_asked_again_on_the_shared_pool() {
    // Nothing listens there: every connection attempt is refused until the acquire timeout.
    let url = format!(
        "postgres://stickyfarm:unused@127.0.0.1:{}/postgres",
        stickyfarm_testkit::free_port()
    );
    let metrics = Arc::new(Metrics::new());
    let store = store_at(&url, Duration::from_millis(300), metrics.clone());
    let key = SessionIdKey::new(SESSION_ID_KEY.as_bytes());
    let id = key.stored(&SessionId::generate());
    let err = store
        .generation(id)
        .await
        .expect_err("no PostgreSQL, no generation");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    // One attempt on the checks' connection, no retry after a timeout, and no second wait on
    // the shared pool (op "generation").
    assert_eq!(db_counter(&metrics, "errors", "generations"), 1);
    assert_eq!(db_counter(&metrics, "queries", "generation"), 0);
}
