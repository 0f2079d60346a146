//! UserSig: Tencent's TLSSigAPIv2 admin signature.
//!
//! Every REST call carries a UserSig for the admin identifier in its URL. It
//! is an HMAC-SHA256 over four `TLS.*` lines, wrapped in JSON, deflated and
//! base64'd with a URL-safe alphabet of Tencent's own (`+`→`*`, `/`→`-`,
//! `=`→`_`). [`generate`] makes one, [`verify`] checks one (the simulator
//! uses it, and the tests use it on strings made by Tencent's libraries),
//! and [`Signer`] caches one for the worker and renews it well before it
//! expires.
//!
//! The secret key is the UTF-8 text as written, never hex-decoded, even when
//! it looks like hex: that is what Tencent's libraries do.

use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// How long a signature the worker makes stays valid. Tencent recommends at
/// least a day; a day keeps a leaked URL useful for as short as is practical.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Why a UserSig was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the UserSig is not valid base64, zlib or JSON: {0}")]
    Malformed(String),
    #[error("the UserSig was made for identifier {found:?}, not {expected:?}")]
    WrongIdentifier { expected: String, found: String },
    #[error("the UserSig was made for SDKAppID {found}, not {expected}")]
    WrongSdkAppId { expected: u64, found: u64 },
    #[error("the UserSig's signature does not match the secret key")]
    BadSignature,
    #[error("the UserSig expired at {expired_at} (unix seconds)")]
    Expired { expired_at: u64 },
}

/// The fields a UserSig carries once decoded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Decoded {
    #[serde(rename = "TLS.ver")]
    pub ver: String,
    #[serde(rename = "TLS.identifier")]
    pub identifier: String,
    #[serde(rename = "TLS.sdkappid")]
    pub sdkappid: u64,
    #[serde(rename = "TLS.time")]
    pub time: u64,
    #[serde(rename = "TLS.expire")]
    pub expire: u64,
    #[serde(rename = "TLS.userbuf", default)]
    pub userbuf: Option<String>,
    #[serde(rename = "TLS.sig")]
    pub sig: String,
}

impl Decoded {
    /// Unix second after which the signature is refused.
    pub fn expires_at(&self) -> u64 {
        self.time.saturating_add(self.expire)
    }
}

/// The text that is signed; every line ends in `\n`, the last one too.
pub fn signed_content(identifier: &str, sdkappid: u64, time: u64, expire: u64, userbuf: Option<&str>) -> String {
    let mut text =
        format!("TLS.identifier:{identifier}\nTLS.sdkappid:{sdkappid}\nTLS.time:{time}\nTLS.expire:{expire}\n");
    if let Some(buf) = userbuf {
        text.push_str("TLS.userbuf:");
        text.push_str(buf);
        text.push('\n');
    }
    text
}

fn hmac(key: &SecretString, content: &str) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key.expose_secret().as_bytes()).expect("HMAC takes any key length");
    mac.update(content.as_bytes());
    mac
}

/// `TLS.sig` for the given fields: standard base64 of the HMAC. `userbuf`
/// is the standard-base64 text of the optional user buffer.
pub fn tls_sig(
    key: &SecretString,
    identifier: &str,
    sdkappid: u64,
    time: u64,
    expire: u64,
    userbuf: Option<&str>,
) -> String {
    let mac = hmac(key, &signed_content(identifier, sdkappid, time, expire, userbuf));
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Makes a UserSig signed at `time` (unix seconds) and valid for `expire` seconds.
pub fn generate(key: &SecretString, sdkappid: u64, identifier: &str, time: u64, expire: u64) -> SecretString {
    let json = serde_json::json!({
        "TLS.ver": "2.0",
        "TLS.identifier": identifier,
        "TLS.sdkappid": sdkappid,
        "TLS.expire": expire,
        "TLS.time": time,
        "TLS.sig": tls_sig(key, identifier, sdkappid, time, expire, None),
    });
    let mut deflater = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    deflater
        .write_all(json.to_string().as_bytes())
        .and_then(|()| deflater.finish())
        .map(|compressed| SecretString::from(to_tencent_base64(&compressed)))
        .expect("deflating into memory cannot fail")
}

fn to_tencent_base64(bytes: &[u8]) -> String {
    STANDARD
        .encode(bytes)
        .chars()
        .map(|c| match c {
            '+' => '*',
            '/' => '-',
            '=' => '_',
            other => other,
        })
        .collect()
}

/// Reverses the encoding without checking the signature.
pub fn decode(usersig: &str) -> Result<Decoded, VerifyError> {
    let standard: String = usersig
        .chars()
        .map(|c| match c {
            '*' => '+',
            '-' => '/',
            '_' => '=',
            other => other,
        })
        .collect();
    let compressed =
        STANDARD.decode(standard.as_bytes()).map_err(|e| VerifyError::Malformed(format!("base64: {e}")))?;
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(compressed.as_slice())
        .take(64 * 1024)
        .read_to_end(&mut json)
        .map_err(|e| VerifyError::Malformed(format!("zlib: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| VerifyError::Malformed(format!("json: {e}")))
}

/// Checks a UserSig the way Tencent's server does: decode, check who it is
/// for, recompute the HMAC from the decoded fields, compare in constant
/// time, and refuse it once `now` is past `time + expire`.
pub fn verify(
    key: &SecretString,
    usersig: &str,
    sdkappid: u64,
    identifier: &str,
    now: u64,
) -> Result<Decoded, VerifyError> {
    let decoded = decode(usersig)?;
    if decoded.identifier != identifier {
        return Err(VerifyError::WrongIdentifier { expected: identifier.to_owned(), found: decoded.identifier });
    }
    if decoded.sdkappid != sdkappid {
        return Err(VerifyError::WrongSdkAppId { expected: sdkappid, found: decoded.sdkappid });
    }
    let expected = STANDARD.decode(&decoded.sig).map_err(|_| VerifyError::BadSignature)?;
    let content =
        signed_content(&decoded.identifier, decoded.sdkappid, decoded.time, decoded.expire, decoded.userbuf.as_deref());
    hmac(key, &content).verify_slice(&expected).map_err(|_| VerifyError::BadSignature)?;
    if now > decoded.expires_at() {
        return Err(VerifyError::Expired { expired_at: decoded.expires_at() });
    }
    Ok(decoded)
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Where the worker's UserSig comes from.
#[derive(Debug)]
pub enum Signer {
    /// Made from the secret key, cached, renewed once half its life is gone.
    Key {
        key: SecretString,
        sdkappid: u64,
        identifier: String,
        validity: Duration,
        cached: Mutex<Option<(SecretString, u64)>>,
    },
    /// Given ready-made by the operator; it cannot be renewed.
    Fixed(SecretString),
}

impl Signer {
    pub fn from_key(key: SecretString, sdkappid: u64, identifier: String, validity: Duration) -> Self {
        Signer::Key { key, sdkappid, identifier, validity, cached: Mutex::new(None) }
    }

    /// The UserSig to use now. Cheap: a cached string is cloned until it is
    /// half-way through its validity.
    pub fn current(&self) -> SecretString {
        match self {
            Signer::Fixed(sig) => sig.clone(),
            Signer::Key { key, sdkappid, identifier, validity, cached } => {
                let now = unix_now();
                let mut cached = cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                match &*cached {
                    Some((sig, renew_at)) if now < *renew_at => sig.clone(),
                    _ => {
                        let expire = validity.as_secs().max(60);
                        let sig = generate(key, *sdkappid, identifier, now, expire);
                        *cached = Some((sig.clone(), now + expire / 2));
                        sig
                    }
                }
            }
        }
    }

    /// Drops the cached UserSig so the next call signs anew. Returns false
    /// when that is impossible (a ready-made UserSig).
    pub fn invalidate(&self) -> bool {
        match self {
            Signer::Fixed(_) => false,
            Signer::Key { cached, .. } => {
                *cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretString {
        SecretString::from("5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e")
    }

    #[test]
    fn round_trip_verifies() {
        let sig = generate(&key(), 1400000000, "administrator", 1_700_000_000, 86400);
        let decoded = verify(&key(), sig.expose_secret(), 1400000000, "administrator", 1_700_000_001).unwrap();
        assert_eq!(decoded.ver, "2.0");
        assert_eq!(decoded.expires_at(), 1_700_086_400);
    }

    #[test]
    fn refuses_expired_wrong_key_wrong_identity() {
        let sig = generate(&key(), 1400000000, "administrator", 1_700_000_000, 60);
        let s = sig.expose_secret();
        assert_eq!(
            verify(&key(), s, 1400000000, "administrator", 1_700_000_061),
            Err(VerifyError::Expired { expired_at: 1_700_000_060 })
        );
        assert_eq!(
            verify(&SecretString::from("other"), s, 1400000000, "administrator", 1_700_000_000),
            Err(VerifyError::BadSignature)
        );
        assert!(matches!(verify(&key(), s, 1400000001, "administrator", 0), Err(VerifyError::WrongSdkAppId { .. })));
        assert!(matches!(verify(&key(), s, 1400000000, "admin", 0), Err(VerifyError::WrongIdentifier { .. })));
        assert!(matches!(verify(&key(), "not*a*sig", 1, "a", 0), Err(VerifyError::Malformed(_))));
    }

    #[test]
    fn signer_caches_and_renews() {
        let signer = Signer::from_key(key(), 1400000000, "administrator".into(), DEFAULT_VALIDITY);
        let a = signer.current();
        let b = signer.current();
        assert_eq!(a.expose_secret(), b.expose_secret());
        assert!(signer.invalidate());
        let fixed = Signer::Fixed(SecretString::from("x"));
        assert!(!fixed.invalidate());
        assert!(!format!("{signer:?}").contains("5bd2850f"), "Debug must not print the key");
    }
}
