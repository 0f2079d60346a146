//! The apps file (CONTRACT §7): several SDKAppIDs served by one worker.
//!
//! Read in two steps. [`read`] checks the file's shape (known keys, one
//! entry per SDKAppID, no inline secret) and is all that `enqueue`,
//! `replay` and the console need to route by app. [`resolve`] then reads
//! each app's credential from its environment variable or file and builds
//! the [`AppConfig`]s the worker runs.
//!
//! The file's own text never reaches an error: toml's parse errors quote
//! the offending line, which may be the one holding a pasted secret, so
//! they are rendered here as the message and a line number only.

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::{AppConfig, AppQueue, ConfigError, Credential, Endpoint, defaults};
use crate::api::{ApiFamily, ClientSettings};

/// One `[[app]]` as written, its credential not yet read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppEntry {
    pub sdkappid: u64,
    region: Option<String>,
    api_base_url: Option<String>,
    api_backup_url: Option<String>,
    identifier: Option<String>,
    secret_key_env: Option<String>,
    secret_key_file: Option<PathBuf>,
    usersig_env: Option<String>,
    usersig_file: Option<PathBuf>,
    api: Option<ApiFamily>,
    max_calls_per_second: Option<u32>,
    /// Accepted by the parser only to be refused by name: whatever type
    /// the value has, it is skipped without being kept or echoed.
    secret_key: Option<IgnoredAny>,
    usersig: Option<IgnoredAny>,
    /// Where the entry starts, for errors (filled in after parsing).
    #[serde(skip)]
    line: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppsDoc {
    #[serde(default)]
    app: Vec<toml::Spanned<AppEntry>>,
}

/// What the worker shares with each app's API client.
pub(crate) struct Shared {
    pub request_timeout: std::time::Duration,
    /// `--allow-insecure-http`: plain HTTP to other hosts than this one.
    pub allow_insecure_http: bool,
}

fn error(path: &Path, at: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::AppsFile { path: path.display().to_string(), at: at.into(), problem: problem.into() }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |before| before.matches('\n').count()) + 1
}

/// Every name the file may use, which an error may quote.
const NAMES: &[&str] = &[
    "app",
    "sdkappid",
    "region",
    "api_base_url",
    "api_backup_url",
    "identifier",
    "secret_key_env",
    "secret_key_file",
    "usersig_env",
    "usersig_file",
    "api",
    "max_calls_per_second",
    "secret_key",
    "usersig",
    "all_member_push",
    "timpush",
];

/// A parser message with every quoted value but the file's own names
/// blanked out: serde quotes the value it could not take ("invalid type:
/// string \"…\""), and that value may be a secret pasted in the wrong place.
/// A key is no secret: the unknown one a message starts with stays.
fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    let mut unknown_key = message.starts_with("unknown field `");
    while let Some(open) = rest.find(['"', '`']) {
        let quote = &rest[open..open + 1];
        let Some(len) = rest[open + 1..].find(quote) else { break };
        let quoted = &rest[open + 1..open + 1 + len];
        out.push_str(&rest[..=open]);
        let keep = NAMES.contains(&quoted) || std::mem::take(&mut unknown_key);
        out.push_str(if keep { quoted } else { "…" });
        out.push_str(quote);
        rest = &rest[open + len + 2..];
    }
    out.push_str(rest);
    out
}

/// Reads and checks the file's shape; no credential is read yet.
pub(crate) fn read(path: &Path) -> Result<Vec<AppEntry>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| error(path, "", format!("{e}. Fix: point --apps-file (TAGSWEEP_APPS_FILE) at a readable file")))?;
    parse(path, &text)
}

fn parse(path: &Path, text: &str) -> Result<Vec<AppEntry>, ConfigError> {
    let doc: AppsDoc = toml::from_str(text).map_err(|e| {
        // `message()`, never `Display`: the latter quotes the source line.
        let at = e.span().map(|span| format!(", line {}", line_of(text, span.start))).unwrap_or_default();
        error(path, at, format!("{}. Fix: see README, \"The apps file\"", redact(e.message().trim_end())))
    })?;
    if doc.app.is_empty() {
        return Err(error(path, "", "lists no app. Fix: add an [[app]] table for each SDKAppID"));
    }
    let mut entries: Vec<AppEntry> = Vec::with_capacity(doc.app.len());
    for spanned in doc.app {
        let line = line_of(text, spanned.span().start);
        let mut entry = spanned.into_inner();
        entry.line = line;
        let at = entry.at();
        if entry.secret_key.is_some() || entry.usersig.is_some() {
            let key = if entry.secret_key.is_some() { "secret_key" } else { "usersig" };
            return Err(error(
                path,
                at,
                format!(
                    "an inline {key} is refused (the file would hold a secret). Fix: remove it, rotate the key if the file was shared, and use {key}_env or {key}_file"
                ),
            ));
        }
        if let Some(first) = entries.iter().find(|e| e.sdkappid == entry.sdkappid) {
            return Err(error(
                path,
                at,
                format!(
                    "SDKAppID {} is listed twice (first on line {}). Fix: keep one entry per app",
                    entry.sdkappid, first.line
                ),
            ));
        }
        entries.push(entry);
    }
    Ok(entries)
}

impl AppEntry {
    fn at(&self) -> String {
        format!(", app {} (line {})", self.sdkappid, self.line)
    }

    /// The credential from exactly one of its four sources.
    fn credential(&self, path: &Path) -> Result<Credential, ConfigError> {
        let at = self.at();
        let sources = [
            self.secret_key_env.as_ref().map(|_| "secret_key_env"),
            self.secret_key_file.as_ref().map(|_| "secret_key_file"),
            self.usersig_env.as_ref().map(|_| "usersig_env"),
            self.usersig_file.as_ref().map(|_| "usersig_file"),
        ];
        let given: Vec<&str> = sources.into_iter().flatten().collect();
        match given.as_slice() {
            [] => {
                return Err(error(
                    path,
                    at,
                    "no credential. Fix: add secret_key_env = \"VAR\" or secret_key_file = \"/run/secrets/…\"",
                ));
            }
            [_] => {}
            more => {
                return Err(error(
                    path,
                    at,
                    format!("{} give the credential twice. Fix: keep one", more.join(" and ")),
                ));
            }
        }
        let from_env = |key: &str, var: &str| -> Result<SecretString, ConfigError> {
            match std::env::var(var) {
                Ok(value) if !value.trim().is_empty() => Ok(SecretString::from(value.trim().to_owned())),
                Ok(_) => Err(error(path, &at, format!("{key} = {var:?}: the variable is empty. Fix: set it"))),
                Err(_) => Err(error(
                    path,
                    &at,
                    format!("{key} = {var:?}: the variable is not set. Fix: export it in the worker's environment"),
                )),
            }
        };
        let from_file = |key: &str, file: &Path| -> Result<SecretString, ConfigError> {
            // The error names the path and the cause, never what the file holds.
            let text = std::fs::read_to_string(file).map_err(|e| {
                error(path, &at, format!("{key} {}: {e}. Fix: point it at a readable file", file.display()))
            })?;
            let secret = text.trim();
            if secret.is_empty() {
                return Err(error(path, &at, format!("{key} {}: the file is empty", file.display())));
            }
            Ok(SecretString::from(secret.to_owned()))
        };
        Ok(match self {
            AppEntry { secret_key_env: Some(var), .. } => Credential::SecretKey(from_env("secret_key_env", var)?),
            AppEntry { secret_key_file: Some(file), .. } => Credential::SecretKey(from_file("secret_key_file", file)?),
            AppEntry { usersig_env: Some(var), .. } => Credential::UserSig(from_env("usersig_env", var)?),
            AppEntry { usersig_file: Some(file), .. } => Credential::UserSig(from_file("usersig_file", file)?),
            _ => unreachable!("exactly one source was checked above"),
        })
    }
}

/// Each app's settings, its credential read; the queue of app N is
/// `<queue>.N`, bound with `<routing-key>.N`.
pub(crate) fn resolve(path: &Path, entries: Vec<AppEntry>, shared: &Shared) -> Result<Vec<AppConfig>, ConfigError> {
    entries
        .into_iter()
        .map(|entry| {
            let at = entry.at();
            // The flags' wording, in the file's words.
            let in_file = |e: ConfigError| match e {
                ConfigError::UnknownRegion(problem) => error(path, &at, format!("region: {problem}")),
                ConfigError::BadBaseUrl(url) => error(
                    path,
                    &at,
                    format!("{url:?} must start with http:// or https:// and carry no query. Fix: correct api_base_url or api_backup_url"),
                ),
                ConfigError::InsecureUrl { flag, url, host } => {
                    let key = if flag == "--api-base-url" { "api_base_url" } else { "api_backup_url" };
                    error(
                        path,
                        &at,
                        format!(
                            "{key} {url:?} is plain HTTP to {host}: the UserSig would travel in cleartext. Fix: use \
                             https://, or pass --allow-insecure-http (TAGSWEEP_ALLOW_INSECURE_HTTP=true) for a \
                             trusted network such as a local simulator"
                        ),
                    )
                }
                other => error(path, &at, other.to_string()),
            };
            let endpoint = Endpoint::resolve(
                entry.region.clone(),
                entry.api_base_url.clone(),
                entry.api_backup_url.clone(),
                shared.allow_insecure_http,
            )
            .map_err(in_file)?;
            let credential = entry.credential(path)?;
            let identifier = entry.identifier.clone().unwrap_or_else(|| defaults::IDENTIFIER.to_owned());
            if identifier.trim().is_empty() {
                return Err(error(path, &at, "identifier must not be empty"));
            }
            let max_calls_per_second = entry.max_calls_per_second.unwrap_or(defaults::MAX_CALLS_PER_SECOND);
            if max_calls_per_second == 0 {
                return Err(error(path, &at, "max_calls_per_second must be at least 1"));
            }
            Ok(AppConfig {
                api: ClientSettings {
                    base_url: endpoint.base_url,
                    backup_url: endpoint.backup_url,
                    failback_after: defaults::FAILBACK_AFTER,
                    sdkappid: entry.sdkappid,
                    identifier,
                    request_timeout: shared.request_timeout,
                    family: entry.api.unwrap_or_default(),
                },
                credential,
                max_calls_per_second,
                queue: AppQueue::Own,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    const PATH: &str = "apps.toml";

    fn parsed(text: &str) -> Result<Vec<AppEntry>, ConfigError> {
        parse(Path::new(PATH), text)
    }

    fn shared() -> Shared {
        Shared { request_timeout: std::time::Duration::from_secs(5), allow_insecure_http: false }
    }

    #[test]
    fn an_inline_secret_is_refused_without_its_value() {
        for text in [
            "[[app]]\nsdkappid = 1\nregion = \"china\"\nsecret_key = \"pasted-secret-value\"\n",
            "[[app]]\nsdkappid = 1\nregion = \"china\"\nusersig = \"pasted-secret-value\"\n",
            // Not even as another type, nor when the line does not parse.
            "[[app]]\nsdkappid = 1\nsecret_key = [\"pasted-secret-value\"]\n",
            "[[app]]\nsdkappid = 1\nsecret_key = pasted-secret-value\n",
            "[[app]]\nsdkappid = \"pasted-secret-value\"\n",
        ] {
            let message = parsed(text).unwrap_err().to_string();
            assert!(!message.contains("pasted-secret-value"), "{message}");
            assert!(message.contains("apps.toml") && message.contains("line"), "{message}");
        }
        let message = parsed("[[app]]\nsdkappid = 7\nsecret_key = \"x\"\n").unwrap_err().to_string();
        assert!(message.contains("inline secret_key is refused") && message.contains("secret_key_env"), "{message}");
    }

    #[test]
    fn unknown_keys_and_duplicates_say_where() {
        let message = parsed("[[app]]\nsdkappid = 1\nregoin = \"china\"\n").unwrap_err().to_string();
        assert!(message.contains("regoin") && message.contains("line 3"), "{message}");
        let message = parsed("[[app]]\nsdkappid = 5\n\n[[app]]\nsdkappid = 5\n").unwrap_err().to_string();
        assert!(message.contains("listed twice (first on line 1)") && message.contains("line 4"), "{message}");
        assert!(parsed("").unwrap_err().to_string().contains("lists no app"));
        let message = parsed("[[app]]\nsdkappid = 5\napi = \"carrier_pigeon\"\n").unwrap_err().to_string();
        assert!(message.contains("`timpush`") && !message.contains("carrier_pigeon"), "{message}");
        assert_eq!(redact("unknown variant `sk-123`, expected `timpush`"), "unknown variant `…`, expected `timpush`");
    }

    #[test]
    fn credentials_come_from_the_environment_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sg");
        std::fs::write(&file, "sg-key\n").unwrap();
        let text = format!(
            "[[app]]\nsdkappid = 1\nregion = \"china\"\nsecret_key_env = \"TAGSWEEP_APPS_TEST_UNSET_VARIABLE\"\n\n\
             [[app]]\nsdkappid = 2\napi_base_url = \"http://127.0.0.1:9/\"\nsecret_key_file = {:?}\napi = \"timpush\"\nmax_calls_per_second = 50\n",
            file.display()
        );
        let entries = parsed(&text).unwrap();
        let message = resolve(Path::new(PATH), entries.clone(), &shared()).unwrap_err().to_string();
        assert!(message.contains("TAGSWEEP_APPS_TEST_UNSET_VARIABLE") && message.contains("not set"), "{message}");

        let apps = resolve(Path::new(PATH), entries[1..].to_vec(), &shared()).unwrap();
        let app = &apps[0];
        assert_eq!((app.api.sdkappid, app.max_calls_per_second, app.api.family), (2, 50, ApiFamily::Timpush));
        assert_eq!(app.api.base_url, "http://127.0.0.1:9");
        assert_eq!(app.api.identifier, "administrator");
        assert_eq!(app.queue, AppQueue::Own);
        assert!(matches!(&app.credential, Credential::SecretKey(k) if k.expose_secret() == "sg-key"));

        let both = "[[app]]\nsdkappid = 3\nregion = \"china\"\nsecret_key_env = \"A\"\nusersig_file = \"/x\"\n";
        let message = resolve(Path::new(PATH), parsed(both).unwrap(), &shared()).unwrap_err().to_string();
        assert!(message.contains("twice"), "{message}");
        let bad_url = "[[app]]\nsdkappid = 3\napi_base_url = \"ftp://x\"\nusersig_env = \"A\"\n";
        let message = resolve(Path::new(PATH), parsed(bad_url).unwrap(), &shared()).unwrap_err().to_string();
        assert!(message.contains("app 3 (line 1)") && message.contains("http://"), "{message}");
    }

    #[test]
    fn every_apps_urls_must_be_https_except_to_this_machine_or_on_request() {
        let text = |base: &str, backup: &str| {
            format!(
                "[[app]]\nsdkappid = 4\napi_base_url = \"{base}\"\napi_backup_url = \"{backup}\"\n\
                 secret_key_env = \"PATH\"\n"
            )
        };
        let resolved = |text: &str, allow_insecure_http: bool| {
            let shared = Shared { allow_insecure_http, ..shared() };
            resolve(Path::new(PATH), parsed(text).unwrap(), &shared)
        };
        assert!(resolved(&text("http://127.0.0.1:9", "http://[::1]:9"), false).is_ok());
        assert!(resolved(&text("https://example.com", "https://example.org"), false).is_ok());
        let message = resolved(&text("http://example.com", "https://example.org"), false).unwrap_err().to_string();
        assert!(message.contains("app 4 (line 1)") && message.contains("api_base_url"), "{message}");
        assert!(message.contains("example.com") && message.contains("Fix: use"), "{message}");
        let message = resolved(&text("https://example.com", "http://backup.example"), false).unwrap_err().to_string();
        assert!(message.contains("api_backup_url") && message.contains("backup.example"), "{message}");
        assert!(resolved(&text("http://example.com", "http://backup.example"), true).is_ok(), "on request");
    }
}
