//! The request tagsweep sends is exactly the one on Tencent's page:
//! POST, the path, the five query parameters, the `UserTags` body; and
//! each API family's path and body for each kind of batch (CONTRACT §8).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::routing::any;
use secrecy::SecretString;
use tagsweep::usersig::{self, Signer};
use tagsweep::{ApiClient, ApiFamily, ClientSettings};
use tagsweep::{Batch, BatchSize, Entry, PartId, Removal};

#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    uri: Uri,
    query: HashMap<String, String>,
    content_type: Option<String>,
    body: serde_json::Value,
}

type Log = Arc<Mutex<Vec<Seen>>>;

async fn capture(
    State(log): State<Log>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> &'static str {
    log.lock().unwrap().push(Seen {
        method,
        uri,
        query,
        content_type: headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    });
    r#"{"ActionStatus": "OK","ErrorInfo": "","ErrorCode":0}"#
}

fn entry(job: u64, account: &str, tags: &[&str]) -> Entry {
    Entry {
        part: PartId { job, index: 0 },
        account: account.into(),
        removal: Removal::Tags(tags.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>().into()),
    }
}

fn batch(entries: impl IntoIterator<Item = Entry>) -> Batch {
    Batch::of(BatchSize::MAX, entries).expect("a valid batch")
}

/// Serves `capture` on a random port; returns its base URL and log.
async fn capturing() -> (String, Log) {
    let log: Log = Arc::default();
    let app = axum::Router::new().fallback(any(capture)).with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), log)
}

#[tokio::test]
async fn each_family_sends_each_kind_to_its_own_path_with_its_own_body() {
    let (base, log) = capturing().await;
    let clear = |job, account: &str| Entry {
        part: PartId { job, index: 0 },
        account: account.into(),
        removal: Removal::AllTags,
    };
    let cases = [
        (ApiFamily::AllMemberPush, "/v4/all_member_push/im_remove_tag", "/v4/all_member_push/im_remove_all_tags"),
        (ApiFamily::Timpush, "/v4/timpush/remove_tag", "/v4/timpush/clear_all_tags"),
    ];
    for (family, tags_path, all_path) in cases {
        let settings = ClientSettings { family, ..ClientSettings::new(&base, 88888888, "admin") };
        let client = ApiClient::new(&settings, Arc::new(Signer::Fixed(SecretString::from("sig")))).unwrap();
        let tags = client.remove(&batch([entry(1, "u1", &["a", "b"]), entry(2, "u2", &["c"])])).await;
        let all = client.remove(&batch([clear(3, "u1"), clear(4, "u3")])).await;
        assert_eq!((tags.outcome, all.outcome), (Ok(()), Ok(())));
        let seen = log.lock().unwrap().drain(..).collect::<Vec<_>>();
        assert_eq!(seen.iter().map(|s| s.uri.path()).collect::<Vec<_>>(), [tags_path, all_path], "{family}");
        let user_tags = serde_json::json!({"UserTags": [
            {"To_Account": "u1", "Tags": ["a", "b"]}, {"To_Account": "u2", "Tags": ["c"]}]});
        assert_eq!(seen[0].body, user_tags);
        assert_eq!(seen[1].body, serde_json::json!({"To_Account": ["u1", "u3"]}), "{family}: accounts only");
        for call in &seen {
            let names: Vec<&str> = call.uri.query().unwrap().split('&').map(|p| p.split('=').next().unwrap()).collect();
            assert_eq!(names, ["usersig", "identifier", "sdkappid", "random", "contenttype"], "the same query");
        }
    }
}

#[tokio::test]
async fn the_request_matches_the_seed_sample() {
    let (base, log) = capturing().await;
    let key = SecretString::from("seed-sample-key");
    let signer = Signer::from_key(key.clone(), 88888888, "admin".into(), Duration::from_secs(86400));
    let settings = ClientSettings::new(base, 88888888, "admin");
    let client = ApiClient::new(&settings, Arc::new(signer)).unwrap();
    let entries = batch([entry(1, "xiaojun012", &["a", "b"]), entry(2, "xiaojun013", &["a", "b"])]);
    for _ in 0..2 {
        let report = client.remove(&entries).await;
        assert_eq!(report.outcome, Ok(()));
        assert_eq!(report.http_status, Some(200));
    }

    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    let first = &seen[0];
    assert_eq!(first.method, Method::POST);
    assert_eq!(first.uri.path(), "/v4/all_member_push/im_remove_tag");
    let names: Vec<&str> = first.uri.query().unwrap().split('&').map(|p| p.split('=').next().unwrap()).collect();
    assert_eq!(names, ["usersig", "identifier", "sdkappid", "random", "contenttype"]);
    assert_eq!(first.query["identifier"], "admin");
    assert_eq!(first.query["sdkappid"], "88888888");
    assert_eq!(first.query["contenttype"], "json");
    first.query["random"].parse::<u32>().expect("random is a u32");
    assert_ne!(first.query["random"], seen[1].query["random"], "a fresh random per request");
    usersig::verify(&key, &first.query["usersig"], 88888888, "admin", usersig::unix_now()).expect("a real UserSig");
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    let sample: serde_json::Value = serde_json::from_str(
        r#"{"UserTags": [{"To_Account": "xiaojun012","Tags": ["a", "b"]},{"To_Account": "xiaojun013","Tags": ["a", "b"]}]}"#,
    )
    .unwrap();
    assert_eq!(first.body, sample, "the body is the seed's sample request");
}

#[tokio::test]
async fn errors_never_show_the_usersig() {
    // Nothing listens on this port: the call fails at connect time.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let sig = "eJyrVgrxCdYrSy1SslJQMtIzUNJRAItkpqTmlWSmZUIkElNyM-Myi0uKEkvyi2BKilOyEwsKMlOACgxNDKAAKpdaUZBZlAqUsTAzgQuWZOaChAzN0RQXZ6aDLKn0cUzVLjcPD00NLS1MCrPM0A*JMLcoNTLMD3HP1M60jCowLDUOKMiLNDOwVaoFAD4PNPI_";
    let settings = ClientSettings::new(format!("http://{addr}"), 1400000000, "administrator");
    let client = ApiClient::new(&settings, Arc::new(Signer::Fixed(SecretString::from(sig)))).unwrap();
    let report = client.remove(&batch([entry(1, "u", &["a"])])).await;
    let error = report.outcome.unwrap_err();
    assert_eq!(error.class(), "transient");
    for text in [error.to_string(), format!("{error:?}"), format!("{client:?}")] {
        assert!(!text.contains(&sig[..20]), "leaked the UserSig: {text}");
        assert!(!text.contains("usersig="), "leaked the query: {text}");
    }
}

/// An answer far larger than any of the API's (a proxy's page, or worse)
/// is read only up to a cap, whether or not it declares its length.
#[tokio::test]
async fn an_oversized_answer_is_not_read_whole() {
    let huge = || async { "x".repeat(8 * 1024 * 1024) };
    let streamed = || async {
        let chunks = (0..128).map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b' '; 64 * 1024])));
        axum::body::Body::from_stream(futures_util::stream::iter(chunks))
    };
    let app = axum::Router::new()
        .route("/declared/v4/all_member_push/im_remove_tag", any(huge))
        .route("/streamed/v4/all_member_push/im_remove_tag", any(streamed));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    for base in ["declared", "streamed"] {
        let signer = Signer::Fixed(SecretString::from("sig"));
        let settings = ClientSettings::new(format!("http://{addr}/{base}"), 1, "admin");
        let client = ApiClient::new(&settings, Arc::new(signer)).unwrap();
        let report = client.remove(&batch([entry(1, "u1", &["a"])])).await;
        let error = report.outcome.expect_err(base);
        assert_eq!(error.class(), "transient", "{base}: worth another try, like any non-API answer");
        assert!(error.failure().error_info.contains("over 65536 bytes"), "{base}: {}", error.failure().error_info);
    }
}
