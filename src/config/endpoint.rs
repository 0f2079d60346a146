//! Where an app's calls go: a region's domains or a base URL, and the
//! rules a URL must meet (no query; HTTPS unless it stays on this machine).

use super::{ConfigError, Region};

/// The API endpoint of one app: from its region, or a base URL that
/// overrides it (CONTRACT §6).
pub(crate) struct Endpoint {
    pub base_url: String,
    pub backup_url: Option<String>,
}

impl Endpoint {
    pub(crate) fn resolve(
        region: Option<String>,
        base_url: Option<String>,
        backup_url: Option<String>,
        allow_insecure_http: bool,
    ) -> Result<Endpoint, ConfigError> {
        let non_empty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
        let region = match non_empty(region) {
            Some(name) => Some(name.parse::<Region>().map_err(ConfigError::UnknownRegion)?),
            None => None,
        };
        let (base_url, backup) = match (non_empty(base_url), region) {
            (Some(url), Some(region)) => {
                // CONTRACT §6: the base URL overrides the region. Said out
                // loud, since one of the two settings is then ignored.
                tracing::warn!("--api-base-url {url} overrides --region {}: calls go to the base URL", region.name());
                (check_base_url(&url)?, None)
            }
            (Some(url), None) => (check_base_url(&url)?, None),
            (None, Some(region)) => (region.base_url(), Some(format!("https://{}", region.backup_domain()))),
            (None, None) => return Err(ConfigError::MissingEndpoint),
        };
        let backup_url = match non_empty(backup_url) {
            Some(url) => Some(check_base_url(&url)?),
            None => backup,
        };
        check_transport("--api-base-url", &base_url, allow_insecure_http)?;
        if let Some(backup) = &backup_url {
            check_transport("--api-backup-url", backup, allow_insecure_http)?;
        }
        Ok(Endpoint { base_url, backup_url })
    }
}

fn check_base_url(url: &str) -> Result<String, ConfigError> {
    let trimmed = url.trim().trim_end_matches('/');
    let ok = (trimmed.starts_with("http://") || trimmed.starts_with("https://")) && !trimmed.contains('?');
    if ok { Ok(trimmed.to_owned()) } else { Err(ConfigError::BadBaseUrl(url.to_owned())) }
}

/// Plain HTTP carries the UserSig in the query string in cleartext: it is
/// refused except to this machine, or with `--allow-insecure-http`, which
/// then says so at every start.
fn check_transport(flag: &'static str, url: &str, allow_insecure: bool) -> Result<(), ConfigError> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Ok(());
    };
    let host = url_host(rest);
    if is_loopback(&host) {
        return Ok(());
    }
    if allow_insecure {
        tracing::warn!(
            "{flag}: plain HTTP to {host} allowed by --allow-insecure-http: the UserSig travels in cleartext"
        );
        return Ok(());
    }
    Err(ConfigError::InsecureUrl { flag, url: url.to_owned(), host })
}

/// The host of what follows `scheme://`, without user info, port or path;
/// an IPv6 literal keeps no brackets.
fn url_host(rest: &str) -> String {
    let authority = rest.split(['/', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    host.to_ascii_lowercase()
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
