//! Messages nobody should send, sent anyway, among good ones: each is
//! dead-lettered with its reason, the good ones flow past it, and a
//! redelivery of a bad one finds its row instead of starting a second life.

use std::time::Duration;

use crate::helpers::{TestEnv, job};
use lapin::BasicProperties;
use tagsweep::queue::header_str;

/// Text PostgreSQL cannot store, in every field a message has (CONTRACT §2).
fn nul_messages() -> Vec<(Vec<u8>, BasicProperties)> {
    let body = |text: &str| text.as_bytes().to_vec();
    vec![
        (body(r#"{"job_id":"nul\u0000id","account":"a","tags":["t"]}"#), BasicProperties::default()),
        (body(r#"{"job_id":"nul-account","account":"a\u0000b","tags":["t"]}"#), BasicProperties::default()),
        (body(r#"{"job_id":"nul-tag","account":"a","tags":["ok","t\u0000"]}"#), BasicProperties::default()),
        (body(r#"{"account":"a","tags":["t"]}"#), BasicProperties::default().with_message_id("m\0id".into())),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_character_in_any_field_is_dead_lettered_and_nothing_stalls() {
    let env = TestEnv::new().await;
    let good: Vec<_> = (0..300)
        .map(|i| {
            (job(&format!("ok-{i}"), &format!("u{i}"), &["a"]).to_string().into_bytes(), BasicProperties::default())
        })
        .collect();
    // The bad ones travel in the middle of the stream, in the same chunks.
    let mut messages = good.clone();
    let tail = messages.split_off(150);
    messages.extend(nul_messages());
    messages.extend(tail);
    env.publish(messages).await;

    let worker = env.spawn_worker(env.config());
    env.wait_for_rows(304, Duration::from_secs(30)).await;
    // A redelivery of each bad message maps to the row it already has.
    env.publish(nul_messages()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while env.depth(&env.topology.queue).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the copies are never taken");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Taken is not yet settled: one admission check finds their rows.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let summary = tokio::time::timeout(Duration::from_secs(15), worker.stop())
        .await
        .expect("the worker stops promptly")
        .expect("a clean stop");

    assert_eq!(env.count_rows("succeeded").await, 300, "every good job went through");
    assert_eq!(env.count_rows("dead_lettered").await, 4);
    assert_eq!(env.total_rows().await, 304, "no copy started a second row");
    assert!(summary.duplicates >= 4, "the copies were acknowledged as duplicates: {summary:?}");

    let stored: Vec<(String, Option<String>, Vec<String>, String)> = sqlx::query_as(
        "SELECT job_id, account, tags, error_info FROM tag_removal_jobs WHERE status = 'dead_lettered' ORDER BY job_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let ids: Vec<&str> = stored.iter().map(|(id, ..)| id.as_str()).collect();
    assert_eq!(ids, [r"m\u0000id", "nul-account", "nul-tag", r"nul\u0000id"], "ids stored escaped");
    for (id, account, tags, info) in &stored {
        assert!(info.contains("holds U+0000, which PostgreSQL cannot store"), "{id}: {info}");
        assert!(!account.iter().chain(tags).any(|t| t.contains('\0')), "{id}");
    }
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 4, "one dead letter each, none for the copies");
    let mut letter_ids: Vec<String> =
        letters.iter().filter_map(|l| header_str(&l.properties, "x-tagsweep-job-id")).collect();
    letter_ids.sort();
    assert_eq!(letter_ids, ids, "the header names the row");
    env.cleanup().await;
}
