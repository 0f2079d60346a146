//! The worker's write path (`Store::record`): rows travel as typed arrays,
//! and what comes back out of the table is exactly what went in, whatever
//! the text; a redelivered job keeps its first outcome; a replayed job's
//! second outcome keeps the calls of its first life.

use chrono::{DateTime, Duration, Utc};
use tagsweep::store::{CallRow, DEAD_LETTERED, JobRow, SUCCEEDED, Store};
use uuid::Uuid;

use crate::helpers::TestEnv;

fn call(outcome: &'static str, error_code: Option<i32>, at: DateTime<Utc>) -> CallRow {
    CallRow {
        call_id: Uuid::now_v7(),
        started_at: at,
        latency_ms: 42,
        entries: 2,
        attempt: 1,
        http_status: Some(200),
        error_code,
        error_info: error_code.map(|code| format!("refused \"{code}\", with a \\ and a comma,")),
        outcome,
    }
}

fn row(job_id: &str, tags: &[&str], status: &'static str, calls: &[&CallRow], at: DateTime<Utc>) -> JobRow {
    JobRow {
        job_id: job_id.to_owned(),
        account: Some(format!("{job_id}-account")),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        status,
        attempts: i32::try_from(calls.len()).unwrap(),
        error_code: calls.last().and_then(|c| c.error_code),
        error_info: calls.last().and_then(|c| c.error_info.clone()),
        received_at: at,
        finished_at: at + Duration::milliseconds(80),
        last_call_id: calls.last().map(|c| c.call_id),
        call_ids: calls.iter().map(|c| c.call_id).collect(),
        all_tags: false,
    }
}

type StoredCall = (Uuid, Option<i32>, Option<String>, String, Option<i64>);
type Stored = (Option<String>, Vec<String>, String, i32, Option<i32>, Option<String>, Vec<Uuid>, Option<i64>);

async fn stored(env: &TestEnv, job_id: &str) -> Stored {
    sqlx::query_as(
        "SELECT account, tags, status, attempts, error_code, error_info, call_ids, sdkappid
         FROM tag_removal_jobs WHERE job_id = $1",
    )
    .bind(job_id)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_read_back_as_written_and_keep_their_first_outcome() {
    let env = TestEnv::new().await;
    let store = Store::from_pool(env.pool.clone());
    store.migrate().await.unwrap();
    let now = Utc::now();

    let ok = call("success", None, now);
    let refused = call("permanent", Some(70107), now);
    let hostile = ["", "NULL", "a,b", "{x}", " spaced ", "say \"hi\"", r"back\slash", "中文标签", "'"];
    let rows = vec![
        row("plain", &["news"], SUCCEEDED, &[&ok], now),
        row("hostile \"id\", {1}", &hostile, SUCCEEDED, &[&ok], now),
        row("no-tags", &[], SUCCEEDED, &[&ok], now),
        row("failed", &["a", "b"], DEAD_LETTERED, &[&ok, &refused], now),
    ];
    store.record(1400000000, &[ok.clone(), refused.clone()], &rows).await.unwrap();

    let (account, tags, status, attempts, code, info, call_ids, app) = stored(&env, "hostile \"id\", {1}").await;
    assert_eq!(account.as_deref(), Some("hostile \"id\", {1}-account"));
    assert_eq!(tags, hostile.map(String::from).to_vec());
    assert_eq!((status.as_str(), attempts, code, info), (SUCCEEDED, 1, None, None));
    assert_eq!((call_ids, app), (vec![ok.call_id], Some(1400000000)));
    assert_eq!(stored(&env, "no-tags").await.1, Vec::<String>::new());
    let (_, tags, status, attempts, code, info, call_ids, _) = stored(&env, "failed").await;
    assert_eq!(
        (tags, status.as_str(), attempts, code),
        (vec!["a".to_owned(), "b".to_owned()], DEAD_LETTERED, 2, Some(70107))
    );
    assert_eq!(info.as_deref(), Some("refused \"70107\", with a \\ and a comma,"));
    assert_eq!(call_ids, vec![ok.call_id, refused.call_id]);
    let calls: Vec<StoredCall> =
        sqlx::query_as("SELECT call_id, error_code, error_info, outcome, sdkappid FROM api_calls ORDER BY call_id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        calls,
        vec![
            (ok.call_id, None, None, "success".to_owned(), Some(1400000000)),
            (refused.call_id, Some(70107), refused.error_info.clone(), "permanent".to_owned(), Some(1400000000)),
        ]
    );

    // A redelivered job, recorded again (and a call written twice): the
    // first outcome stays.
    let again = call("success", None, now);
    let second = row("failed", &["other"], SUCCEEDED, &[&again], now);
    store.record(1400000000, &[again.clone(), refused.clone()], &[second]).await.unwrap();
    let (_, tags, status, _, code, _, call_ids, _) = stored(&env, "failed").await;
    assert_eq!((tags.len(), status.as_str(), code), (2, DEAD_LETTERED, Some(70107)));
    assert_eq!(call_ids, vec![ok.call_id, refused.call_id]);

    // Replayed (the row leaves its terminal status): the second life's
    // outcome is written, both lives' calls kept, the first receipt kept.
    sqlx::query("UPDATE tag_removal_jobs SET status = 'replaying' WHERE job_id = 'failed'")
        .execute(&env.pool)
        .await
        .unwrap();
    let later = row("failed", &["a", "b"], SUCCEEDED, &[&again], now + Duration::minutes(5));
    store.record(1400000000, std::slice::from_ref(&again), &[later]).await.unwrap();
    let (_, _, status, _, code, _, call_ids, _) = stored(&env, "failed").await;
    assert_eq!((status.as_str(), code), (SUCCEEDED, None));
    assert_eq!(call_ids, vec![ok.call_id, refused.call_id, again.call_id]);
    let received: DateTime<Utc> =
        sqlx::query_scalar("SELECT received_at FROM tag_removal_jobs WHERE job_id = 'failed'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(received.timestamp_micros(), now.timestamp_micros());
    env.cleanup().await;
}
