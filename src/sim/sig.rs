//! The simulator's own UserSig check (TLSSigAPIv2, HMAC-SHA256).
//!
//! Written from Tencent's published algorithm (tencent-im-remove-tag.md,
//! "UserSig", and the algorithm field of usersig_vectors.json), not borrowed
//! from the worker's `usersig` module: were signer and verifier one code, a
//! signer that built the wrong text would be checked against the same wrong
//! text and pass.

use std::io::Read;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Inflated JSON larger than this is refused: a real UserSig is a few
/// hundred bytes, and a zlib bomb must not cost the simulator memory.
const MAX_INFLATED_BYTES: u64 = 64 * 1024;

/// Why a UserSig was refused. The Display text is the ErrorInfo answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigRefusal {
    #[error("UserSig is malformed ({0})")]
    Malformed(&'static str),
    #[error("identifier does not match the UserSig")]
    WrongIdentifier,
    #[error("sdkappid does not match the UserSig")]
    WrongSdkAppId,
    #[error("UserSig verification failed")]
    BadSignature,
    #[error("UserSig expired")]
    Expired,
}

impl SigRefusal {
    /// Tencent's public ErrorCode for the refusal (codes 60000–79999 are the
    /// public list the seed page points to; tencent-im-remove-tag.md files
    /// 70001 as "stale signature" and 70003/70009/70013/70014 as
    /// "credential"). These are the codes this simulator has always answered.
    pub fn code(&self) -> i64 {
        match self {
            SigRefusal::Expired => 70001,
            SigRefusal::Malformed(_) => 70003,
            SigRefusal::BadSignature => 70009,
            SigRefusal::WrongIdentifier => 70013,
            SigRefusal::WrongSdkAppId => 70014,
        }
    }
}

/// The fields a UserSig carries. `TLS.ver` is not signed and not checked.
#[derive(Debug, Deserialize)]
struct Fields {
    #[serde(rename = "TLS.identifier")]
    identifier: String,
    #[serde(rename = "TLS.sdkappid")]
    sdkappid: u64,
    #[serde(rename = "TLS.time")]
    time: u64,
    #[serde(rename = "TLS.expire")]
    expire: u64,
    #[serde(rename = "TLS.userbuf", default)]
    userbuf: Option<String>,
    #[serde(rename = "TLS.sig")]
    sig: String,
}

impl Fields {
    /// The signed text, rebuilt from the parsed values: four lines (five
    /// with a userbuf), each ending in `\n`, the last one too.
    fn signed_text(&self) -> String {
        let Fields { identifier, sdkappid, time, expire, .. } = self;
        let mut text =
            format!("TLS.identifier:{identifier}\nTLS.sdkappid:{sdkappid}\nTLS.time:{time}\nTLS.expire:{expire}\n");
        if let Some(userbuf) = &self.userbuf {
            text.push_str(&format!("TLS.userbuf:{userbuf}\n"));
        }
        text
    }
}

/// Checks `usersig` as Tencent's server would for a call from `identifier`
/// to app `sdkappid` at unix second `now`: unpack it, check whom it is for,
/// recompute the HMAC with the key's UTF-8 bytes (never hex-decoded) and
/// compare in constant time, and refuse it once `now > time + expire`.
///
/// `now` is a parameter so that strings made at a frozen time (the fixture
/// of Tencent's own libraries) can be checked at that time.
pub fn verify_usersig(
    key: &SecretString,
    usersig: &str,
    sdkappid: u64,
    identifier: &str,
    now: u64,
) -> Result<(), SigRefusal> {
    let fields = unpack(usersig)?;
    if fields.identifier != identifier {
        return Err(SigRefusal::WrongIdentifier);
    }
    if fields.sdkappid != sdkappid {
        return Err(SigRefusal::WrongSdkAppId);
    }
    let claimed = STANDARD.decode(&fields.sig).map_err(|_| SigRefusal::BadSignature)?;
    // `verify_slice` compares in constant time.
    mac(key, &fields.signed_text()).verify_slice(&claimed).map_err(|_| SigRefusal::BadSignature)?;
    if now > fields.time.saturating_add(fields.expire) {
        return Err(SigRefusal::Expired);
    }
    Ok(())
}

/// Undoes Tencent's URL-safe alphabet (`*`→`+`, `-`→`/`, `_`→`=`), base64,
/// zlib and JSON, in that order.
fn unpack(usersig: &str) -> Result<Fields, SigRefusal> {
    let standard: String = usersig
        .chars()
        .map(|c| match c {
            '*' => '+',
            '-' => '/',
            '_' => '=',
            other => other,
        })
        .collect();
    let compressed = STANDARD.decode(standard).map_err(|_| SigRefusal::Malformed("not base64"))?;
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(compressed.as_slice())
        .take(MAX_INFLATED_BYTES)
        .read_to_end(&mut json)
        .map_err(|_| SigRefusal::Malformed("not zlib"))?;
    serde_json::from_slice(&json).map_err(|_| SigRefusal::Malformed("not the TLS.* JSON"))
}

fn mac(key: &SecretString, text: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key.expose_secret().as_bytes()).expect("HMAC takes a key of any length");
    mac.update(text.as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use serde_json::{Value, json};

    use super::*;

    const APP: u64 = 1400000000;
    const T: u64 = 1_700_000_000;

    fn key() -> SecretString {
        SecretString::from("5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e")
    }

    /// Packs JSON the way Tencent's libraries do: zlib, base64, URL-safe alphabet.
    fn pack(fields: &Value) -> String {
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(fields.to_string().as_bytes()).unwrap();
        let encoded = STANDARD.encode(zlib.finish().unwrap());
        encoded.replace('+', "*").replace('/', "-").replace('=', "_")
    }

    /// The fields of a sig signed by `key` for `identifier` at `T`, valid `expire` s.
    fn signed_fields(key: &SecretString, identifier: &str, expire: u64) -> Value {
        let text = format!("TLS.identifier:{identifier}\nTLS.sdkappid:{APP}\nTLS.time:{T}\nTLS.expire:{expire}\n");
        let sig = STANDARD.encode(mac(key, &text).finalize().into_bytes());
        json!({"TLS.ver": "2.0", "TLS.identifier": identifier, "TLS.sdkappid": APP,
               "TLS.time": T, "TLS.expire": expire, "TLS.sig": sig})
    }

    fn good_sig() -> String {
        pack(&signed_fields(&key(), "administrator", 60))
    }

    #[test]
    fn a_good_sig_passes_until_its_last_second() {
        assert_eq!(verify_usersig(&key(), &good_sig(), APP, "administrator", T), Ok(()));
        assert_eq!(verify_usersig(&key(), &good_sig(), APP, "administrator", T + 60), Ok(()));
        assert_eq!(verify_usersig(&key(), &good_sig(), APP, "administrator", T + 61), Err(SigRefusal::Expired));
    }

    #[test]
    fn a_sig_for_someone_else_is_refused() {
        assert_eq!(verify_usersig(&key(), &good_sig(), APP + 1, "administrator", T), Err(SigRefusal::WrongSdkAppId));
        assert_eq!(verify_usersig(&key(), &good_sig(), APP, "admin", T), Err(SigRefusal::WrongIdentifier));
    }

    #[test]
    fn a_tampered_sig_is_refused() {
        // A longer life written into the JSON, the signature left as it was.
        let mut stretched = signed_fields(&key(), "administrator", 60);
        stretched["TLS.expire"] = json!(86400 * 365);
        let stretched = pack(&stretched);
        assert_eq!(verify_usersig(&key(), &stretched, APP, "administrator", T), Err(SigRefusal::BadSignature));
        // Another admin's name over administrator's signature.
        let mut renamed = signed_fields(&key(), "administrator", 60);
        renamed["TLS.identifier"] = json!("admin");
        assert_eq!(verify_usersig(&key(), &pack(&renamed), APP, "admin", T), Err(SigRefusal::BadSignature));
        // Signed with another key.
        let forged = pack(&signed_fields(&SecretString::from("guess"), "administrator", 60));
        assert_eq!(verify_usersig(&key(), &forged, APP, "administrator", T), Err(SigRefusal::BadSignature));
    }

    #[test]
    fn a_hex_looking_key_is_used_as_text_not_decoded() {
        let key = key();
        let as_text = pack(&signed_fields(&key, "administrator", 60));
        assert_eq!(verify_usersig(&key, &as_text, APP, "administrator", T), Ok(()));
        let text = format!("TLS.identifier:administrator\nTLS.sdkappid:{APP}\nTLS.time:{T}\nTLS.expire:60\n");
        let hex_bytes: Vec<u8> = (0..key.expose_secret().len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&key.expose_secret()[i..i + 2], 16).unwrap())
            .collect();
        let mut by_bytes = HmacSha256::new_from_slice(&hex_bytes).unwrap();
        by_bytes.update(text.as_bytes());
        let mut fields = signed_fields(&key, "administrator", 60);
        fields["TLS.sig"] = json!(STANDARD.encode(by_bytes.finalize().into_bytes()));
        assert_eq!(verify_usersig(&key, &pack(&fields), APP, "administrator", T), Err(SigRefusal::BadSignature));
    }

    #[test]
    fn what_is_not_a_usersig_is_malformed_and_answers_70003() {
        for junk in ["not*a*sig", "", &pack(&json!({"TLS.ver": "2.0"})), &STANDARD.encode("plain text")] {
            let refusal = verify_usersig(&key(), junk, APP, "administrator", T).unwrap_err();
            assert!(matches!(refusal, SigRefusal::Malformed(_)), "{junk:?}: {refusal:?}");
            assert_eq!(refusal.code(), 70003);
        }
    }
}
