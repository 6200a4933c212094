//! The shared pool's kept connections against real PostgreSQL: a finished statement's
//! connection serves the next one without going back to sqlx (whose ping is a round trip per
//! statement); a failed or cancelled one goes back to sqlx, which cleans it up, so no leftover
//! answer or open transaction reaches the next statement; a statement waiting for a connection
//! gets a finished one; connections kept too long go back to sqlx.

use std::str::FromStr as _;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgConnection};
use stickyfarm_sidecar::connections::{Connections, KEEP_FOR};
use stickyfarm_testkit::TestDb;

fn connections(db: &TestDb, max: u32, acquire_timeout: Duration) -> Connections {
    let pool = PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(false)
        .connect_lazy_with(PgConnectOptions::from_str(&db.url).unwrap());
    Connections::new(pool, max, acquire_timeout)
}

async fn backend(c: &mut PgConnection) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(c)
        .await
}

#[tokio::test]
async fn a_finished_connection_serves_the_next_statement_without_going_back_to_sqlx() {
    let db = TestDb::new().await;
    let connections = connections(&db, 4, Duration::from_secs(5));

    let first = connections.run(async |c| backend(c).await).await.unwrap();
    for _ in 0..20 {
        let next = connections.run(async |c| backend(c).await).await.unwrap();
        assert_eq!(next, first, "each statement runs on the kept connection");
        // sqlx never had it back, so it never pinged it.
        assert_eq!(connections.kept(), 1);
        assert_eq!(connections.pool().num_idle(), 0);
        assert_eq!(connections.pool().size(), 1);
    }
}

#[tokio::test]
async fn a_failed_statements_connection_goes_back_to_sqlx_and_the_next_statement_works() {
    let db = TestDb::new().await;
    let connections = connections(&db, 4, Duration::from_secs(5));

    let err = connections
        .run(async |c| {
            sqlx::query_scalar::<_, i32>("SELECT 1 / 0")
                .fetch_one(c)
                .await
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("division by zero"), "{err}");
    assert_eq!(
        connections.kept(),
        0,
        "a failed statement's connection is not kept"
    );

    let two: i32 = connections
        .run(async |c| sqlx::query_scalar("SELECT 2").fetch_one(c).await)
        .await
        .unwrap();
    assert_eq!(two, 2);
    assert_eq!(connections.kept(), 1);
}

#[tokio::test]
async fn a_cancelled_statement_leaves_neither_its_answer_nor_its_transaction_behind() {
    let db = TestDb::new().await;
    sqlx::query("CREATE TABLE kept_probe (n int)")
        .execute(&db.pool)
        .await
        .unwrap();
    // A pool of one: the next statement gets the cancelled one's connection, cleaned, or its
    // replacement.
    let connections = connections(&db, 1, Duration::from_secs(10));
    connections.run(async |c| backend(c).await).await.unwrap();

    // A request gives up while its transaction is open and its statement unanswered.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(300),
        connections.run(async |c| {
            let mut tx = c.begin().await?;
            sqlx::query("INSERT INTO kept_probe VALUES (1)")
                .execute(&mut *tx)
                .await?;
            sqlx::query_scalar::<_, i32>("SELECT 7 FROM pg_sleep(1)")
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await
        }),
    )
    .await;
    assert!(cancelled.is_err(), "the statement was cancelled");
    assert_eq!(
        connections.kept(),
        0,
        "a cancelled statement's connection is not kept"
    );

    // The next statement gets its own answer, not the cancelled one's 7, and the insert was
    // rolled back.
    let (answer, probes): (i32, i64) = connections
        .run(async |c| {
            sqlx::query_as("SELECT 3, (SELECT count(*) FROM kept_probe)")
                .fetch_one(c)
                .await
        })
        .await
        .unwrap();
    assert_eq!((answer, probes), (3, 0));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM kept_probe")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    assert_eq!(connections.pool().size(), 1);
}

#[tokio::test]
async fn a_statement_waiting_for_a_connection_gets_one_that_finished() {
    let db = TestDb::new().await;
    let connections = connections(&db, 2, Duration::from_secs(5));
    let mut a = connections.acquire().await.unwrap();
    let mut b = connections.acquire().await.unwrap();
    let a_pid = backend(&mut a).await.unwrap();
    backend(&mut b).await.unwrap();

    // Both connections are out: a third statement waits...
    let waiting = tokio::spawn({
        let connections = connections.clone();
        async move { connections.run(async |c| backend(c).await).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "no connection was free");

    // ...and gets the one that finished, kept rather than handed back to sqlx.
    a.finished();
    let got = tokio::time::timeout(Duration::from_secs(2), waiting)
        .await
        .expect("the waiting statement got the finished connection")
        .unwrap()
        .unwrap();
    assert_eq!(got, a_pid);
    assert_eq!(
        connections.pool().size(),
        2,
        "no third connection was opened"
    );
    b.finished();
}

#[tokio::test]
async fn with_every_connection_out_a_statement_times_out_as_the_pool_would() {
    let db = TestDb::new().await;
    let connections = connections(&db, 1, Duration::from_millis(300));
    let held = connections.acquire().await.unwrap();
    let err = connections
        .run(async |c| backend(c).await)
        .await
        .unwrap_err();
    assert!(matches!(err, sqlx::Error::PoolTimedOut), "{err}");
    held.finished();
    assert!(connections.run(async |c| backend(c).await).await.is_ok());
}

#[tokio::test]
async fn connections_kept_too_long_go_back_to_sqlx_and_the_pool_closes() {
    let db = TestDb::new().await;
    let connections = connections(&db, 4, Duration::from_secs(5));
    let held: Vec<_> = futures::future::join_all((0..3).map(|_| connections.acquire()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for c in held {
        c.finished();
    }
    assert_eq!(connections.kept(), 3);

    // The sweep hands them back (sqlx pings them: they are its idle connections again).
    let deadline = tokio::time::Instant::now() + KEEP_FOR * 4;
    while connections.kept() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(connections.kept(), 0, "kept past KEEP_FOR, handed back");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while connections.pool().num_idle() < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(connections.pool().num_idle(), 3);

    // Kept ones are handed back on close, which would otherwise wait for them for ever.
    connections.run(async |c| backend(c).await).await.unwrap();
    assert_eq!(connections.kept(), 1);
    connections.release_all();
    tokio::time::timeout(Duration::from_secs(5), connections.pool().close())
        .await
        .expect("the pool closed");
}

/// A dozen statements at once on a unit holding one connection (sessions arriving at a backup
/// when a unit dies): they go through the open connection while at most a few more open,
/// instead of one new connection, backend and SCRAM exchange per statement.
#[tokio::test]
async fn a_burst_goes_through_the_open_connections_while_the_pool_grows_one_at_a_time() {
    let db = TestDb::new().await;
    let connections = connections(&db, 16, Duration::from_secs(10));
    connections.run(async |c| backend(c).await).await.unwrap();
    assert_eq!(connections.pool().size(), 1);

    let burst = (0..12).map(|_| {
        let connections = connections.clone();
        async move { connections.run(async |c| backend(c).await).await }
    });
    let backends: std::collections::BTreeSet<i32> = futures::future::join_all(burst)
        .await
        .into_iter()
        .map(|r| r.expect("every statement of the burst ran"))
        .collect();
    let opened = connections.pool().size();
    assert!(
        opened <= 4,
        "{opened} connections for a burst of 12 short statements (one per statement before)"
    );
    assert!(backends.len() as u32 <= opened);
}

/// The statement fetching from sqlx is cancelled while it waits (its request went away): the
/// next statement fetches in its place rather than waiting for a fetch that will never end.
#[tokio::test]
async fn a_cancelled_fetch_lets_the_next_statement_fetch() {
    let db = TestDb::new().await;
    // sqlx may open one connection; the unit allows two statements at once.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .connect_lazy_with(PgConnectOptions::from_str(&db.url).unwrap());
    let connections = Connections::new(pool, 2, Duration::from_secs(10));
    let held = connections.acquire().await.unwrap();

    // Fetches, and waits inside sqlx for the one connection, until it is cancelled.
    let cancelled = tokio::time::timeout(Duration::from_millis(200), connections.acquire()).await;
    assert!(
        cancelled.is_err(),
        "no connection while the only one is held"
    );

    // The held connection goes back to sqlx (not kept): only a fetch can get it now.
    drop(held);
    let n: i32 = tokio::time::timeout(
        Duration::from_secs(5),
        connections.run(async |c| sqlx::query_scalar("SELECT 7").fetch_one(c).await),
    )
    .await
    .expect("the next statement fetched: the cancelled fetch did not block it")
    .unwrap();
    assert_eq!(n, 7);
}
