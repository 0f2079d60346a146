//! PostgreSQL failures while recording: a row the database refuses for its
//! data costs only its own job (the group is halved until it stands alone;
//! the rest get their rows and acks), and a statement timeout is waited
//! out with every job kept, while a shutdown still ends the wait.

use std::time::Duration;

use sqlx::Connection as _;
use tagsweep::store::Store;

use super::eventually;
use crate::helpers::{TestEnv, job};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_database_refuses_costs_only_its_own_job() {
    let env = TestEnv::new().await;
    // A constraint the rows of three accounts break (as a DBA's rule or a
    // trigger would): SQLSTATE 23514, a data error, in the middle of groups.
    Store::from_pool(env.pool.clone()).migrate().await.expect("migrate");
    sqlx::query("ALTER TABLE tag_removal_jobs ADD CONSTRAINT refuse_some CHECK (account NOT LIKE 'refused-%')")
        .execute(&env.pool)
        .await
        .expect("add the constraint");
    let jobs: Vec<_> = (0..300)
        .map(|i| {
            let account = if i % 100 == 50 { format!("refused-{i}") } else { format!("u{i}") };
            job(&format!("d-{i}"), &account, &["a"])
        })
        .collect();
    env.publish_jobs(&jobs).await;
    let worker = env.spawn_worker(env.config());
    env.wait_for_rows(300, Duration::from_secs(30)).await;
    let summary = worker.stop().await.expect("a clean stop");
    println!("rows refused for their data: {summary:?}");

    assert_eq!(env.count_rows("succeeded").await, 300, "each job's outcome is recorded");
    assert_eq!(env.depth(&env.topology.queue).await, 0, "every job acknowledged");
    let refused: Vec<(String, Vec<String>, Option<String>)> =
        sqlx::query_as("SELECT job_id, tags, error_info FROM tag_removal_jobs WHERE account IS NULL ORDER BY job_id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let ids: Vec<&str> = refused.iter().map(|(id, ..)| id.as_str()).collect();
    assert_eq!(ids, ["d-150", "d-250", "d-50"], "exactly the refused rows were rewritten");
    for (id, tags, info) in &refused {
        assert!(tags.is_empty(), "{id}");
        let info = info.as_deref().unwrap_or_default();
        assert!(info.contains("PostgreSQL refused the row") && info.contains("23514"), "{id}: {info}");
    }
    assert_eq!(env.simulator().stats().repeated_removals, 0, "no job was sent twice");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_keeps_every_job_and_shutdown_still_ends_the_wait() {
    let env = TestEnv::new().await;
    Store::from_pool(env.pool.clone()).migrate().await.expect("migrate");
    let set = format!("ALTER DATABASE {} SET statement_timeout = '300ms'", env.database);
    sqlx::query(sqlx::AssertSqlSafe(set)).execute(&env.pool).await.unwrap();
    // A long transaction holds the table: every insert waits, then times
    // out (57014); reads still answer.
    let mut locker = sqlx::PgConnection::connect(&env.database_url).await.unwrap();
    sqlx::query("SET statement_timeout = 0").execute(&mut locker).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE tag_removal_jobs IN EXCLUSIVE MODE").execute(&mut locker).await.unwrap();

    let total = 200;
    let jobs: Vec<_> = (0..total).map(|i| job(&format!("st-{i}"), &format!("u{i}"), &["a"])).collect();
    env.publish_jobs(&jobs).await;
    let worker = env.spawn_worker(env.config());
    eventually("the jobs are sent to the API", Duration::from_secs(20), || async {
        env.simulator().calls().len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.total_rows().await, 0, "nothing recorded while the table is locked");

    // SIGTERM's path while the database times out: the grace bounds it.
    let started = std::time::Instant::now();
    let summary = worker.stop().await.expect("a clean stop");
    let stopped_in = started.elapsed();
    println!("statement timeout: stopped in {stopped_in:?}: {summary:?}");
    assert!(stopped_in < Duration::from_secs(12), "within the 10 s grace (+ the close): {stopped_in:?}");
    eventually("every job is back in the queue", Duration::from_secs(15), || async {
        i64::from(env.depth(&env.topology.queue).await) == total
    })
    .await;

    // The lock goes: a new worker records every job, each once.
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    let worker = env.spawn_worker(env.config());
    env.wait_for_rows(total, Duration::from_secs(30)).await;
    worker.stop().await.expect("a clean stop");
    assert_eq!(env.count_rows("succeeded").await, total);
    assert_eq!(env.depth(&env.topology.queue).await, 0, "nothing lost");
    env.cleanup().await;
}
