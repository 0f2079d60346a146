//! The UserSig vectors made by Tencent's own Python and Node libraries
//! (`tests/fixtures/usersig_vectors.json`, copied from shared/fixtures).
//!
//! Deflate output differs between zlib builds, so the strings cannot match
//! byte for byte; what must match is every decoded field and `TLS.sig`, and
//! both libraries' strings must pass our verifier.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tagsweep::usersig;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    sdkappid: u64,
    key: String,
    identifier: String,
    expire_s: u64,
    time: u64,
    userbuf: Option<String>,
    expires_at: u64,
    hmac_content: String,
    expected_tls_sig: String,
    usersig_python: String,
    usersig_node: String,
    decoded_fields: serde_json::Value,
}

fn cases() -> Vec<Case> {
    let text = include_str!("../fixtures/usersig_vectors.json");
    let fixture: Fixture = serde_json::from_str(text).expect("fixture parses");
    assert_eq!(fixture.cases.len(), 10, "the fixture holds ten cases");
    fixture.cases
}

#[test]
fn signed_text_and_tls_sig_match_tencents_libraries() {
    for case in cases() {
        let key = SecretString::from(case.key.clone());
        let content =
            usersig::signed_content(&case.identifier, case.sdkappid, case.time, case.expire_s, case.userbuf.as_deref());
        assert_eq!(content, case.hmac_content, "{}: signed text", case.name);
        let sig =
            usersig::tls_sig(&key, &case.identifier, case.sdkappid, case.time, case.expire_s, case.userbuf.as_deref());
        assert_eq!(sig, case.expected_tls_sig, "{}: TLS.sig", case.name);
    }
}

#[test]
fn both_libraries_strings_verify_and_decode_to_the_same_fields() {
    for case in cases() {
        let key = SecretString::from(case.key.clone());
        for (lib, string) in [("python", &case.usersig_python), ("node", &case.usersig_node)] {
            let decoded = usersig::verify(&key, string, case.sdkappid, &case.identifier, case.time)
                .unwrap_or_else(|e| panic!("{} ({lib}) does not verify: {e}", case.name));
            let fields = &case.decoded_fields;
            assert_eq!(decoded.ver, fields["TLS.ver"], "{} ({lib})", case.name);
            assert_eq!(decoded.identifier, fields["TLS.identifier"], "{} ({lib})", case.name);
            assert_eq!(decoded.sdkappid, fields["TLS.sdkappid"], "{} ({lib})", case.name);
            assert_eq!(decoded.time, fields["TLS.time"], "{} ({lib})", case.name);
            assert_eq!(decoded.expire, fields["TLS.expire"], "{} ({lib})", case.name);
            assert_eq!(decoded.sig, fields["TLS.sig"], "{} ({lib})", case.name);
            assert_eq!(decoded.sig, case.expected_tls_sig, "{} ({lib})", case.name);
            assert_eq!(decoded.userbuf.as_deref(), case.userbuf.as_deref(), "{} ({lib})", case.name);
            assert_eq!(decoded.expires_at(), case.expires_at, "{} ({lib})", case.name);

            // One second past expiry the same string is refused; a wrong key never verifies.
            assert!(matches!(
                usersig::verify(&key, string, case.sdkappid, &case.identifier, case.expires_at + 1),
                Err(usersig::VerifyError::Expired { .. })
            ));
            let wrong = SecretString::from(format!("{}x", case.key));
            assert_eq!(
                usersig::verify(&wrong, string, case.sdkappid, &case.identifier, case.time),
                Err(usersig::VerifyError::BadSignature),
                "{} ({lib})",
                case.name
            );
        }
    }
}

#[test]
fn our_strings_decode_to_the_fields_tencents_libraries_produce() {
    for case in cases().into_iter().filter(|c| c.userbuf.is_none()) {
        let key = SecretString::from(case.key.clone());
        let ours = usersig::generate(&key, case.sdkappid, &case.identifier, case.time, case.expire_s);
        let decoded = usersig::verify(&key, ours.expose_secret(), case.sdkappid, &case.identifier, case.time)
            .unwrap_or_else(|e| panic!("{}: our string does not verify: {e}", case.name));
        assert_eq!(decoded.sig, case.expected_tls_sig, "{}", case.name);
        assert_eq!(decoded.identifier, case.identifier);
        assert_eq!((decoded.time, decoded.expire), (case.time, case.expire_s));
        // Only Tencent's alphabet: no '+', '/' or '=' may reach the URL.
        assert!(!ours.expose_secret().contains(['+', '/', '=']), "{}", case.name);
    }
}
