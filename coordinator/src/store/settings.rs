//! `[store]` in coordinator.toml: which backend holds the coordinator's state.
//!
//! ```toml
//! [store]
//! backend = "etcd"                      # or "redb" (the default)
//! endpoints = ["http://10.0.1.5:2379", "http://10.0.2.5:2379", "http://10.0.3.5:2379"]
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use drmesh_protocol::config::ConfigError;

/// `[store]` as written. Every key is optional.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// `redb` (default: one coordinator, its state in a local file) or `etcd` (several
    /// coordinators, one leader, the state in an etcd cluster).
    pub backend: Option<String>,
    /// The redb file. Default: the top-level `store_path`, or `drmesh-state.redb` next
    /// to the config file.
    pub path: Option<PathBuf>,
    /// etcd: the members' client URLs. Default `["http://127.0.0.1:2379"]`.
    pub endpoints: Option<Vec<String>>,
    /// etcd: every key drmesh writes starts with it, so several meshes can share one
    /// cluster. Default `/drmesh/`.
    pub prefix: Option<String>,
    /// etcd: how long one request may take before the store reports etcd unavailable.
    /// Default `5s`.
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// etcd: the leader's lease. A leader that has not renewed it for this long is
    /// replaced; it stops acting `leader_ttl / 3` before that. Default `5s` (at least
    /// `3s`).
    #[serde(with = "humantime_serde")]
    pub leader_ttl: Option<Duration>,
    /// This coordinator's name among the coordinators (shown in the status).
    /// Default: the host name.
    pub name: Option<String>,
    /// etcd over TLS: the CA that signed the members' certificates (PEM). With it the
    /// endpoints are `https://` URLs.
    pub ca_file: Option<PathBuf>,
    /// etcd client certificate and key (PEM), when the members require one.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// etcd authentication: the user, and a file holding its password.
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// Where the coordinator's state lives, checked.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreConfig {
    Redb { path: PathBuf },
    Etcd(EtcdSettings),
}

/// `[store] backend = "etcd"`, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub timeout: Duration,
    pub leader_ttl: Duration,
    pub name: String,
    pub tls: Option<EtcdTls>,
    pub user: Option<(String, PathBuf)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EtcdTls {
    pub ca_file: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
}

pub const DEFAULT_ETCD_ENDPOINT: &str = "http://127.0.0.1:2379";
pub const DEFAULT_PREFIX: &str = "/drmesh/";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_LEADER_TTL: Duration = Duration::from_secs(5);

impl StoreSection {
    /// Applies defaults; `store_path` is the top-level key of the same name (kept for
    /// existing files). Relative paths are taken from `base`.
    pub fn validate(
        self,
        store_path: Option<PathBuf>,
        base: &Path,
    ) -> Result<StoreConfig, ConfigError> {
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let backend = self.backend.as_deref().unwrap_or("redb");
        match backend {
            "redb" => {
                for (key, set) in [
                    ("endpoints", self.endpoints.is_some()),
                    ("ca_file", self.ca_file.is_some()),
                    ("user", self.user.is_some()),
                    ("leader_ttl", self.leader_ttl.is_some()),
                ] {
                    if set {
                        return Err(ConfigError::Invalid(format!(
                            "store.{key} is for backend = \"etcd\"; this store is redb"
                        )));
                    }
                }
                let path = self
                    .path
                    .or(store_path)
                    .unwrap_or_else(|| PathBuf::from("drmesh-state.redb"));
                Ok(StoreConfig::Redb { path: abs(path) })
            }
            "etcd" => {
                if self.path.is_some() || store_path.is_some() {
                    return Err(ConfigError::Invalid(
                        "store.path and store_path name a redb file; with backend = \"etcd\" \
                         remove them (drmesh store migrate copies a redb state into etcd)"
                            .into(),
                    ));
                }
                let endpoints = self
                    .endpoints
                    .unwrap_or_else(|| vec![DEFAULT_ETCD_ENDPOINT.to_string()]);
                if endpoints.is_empty() {
                    return Err(ConfigError::Invalid(
                        "store.endpoints is empty: name at least one etcd member".into(),
                    ));
                }
                let tls = match self.ca_file {
                    Some(ca) => Some(EtcdTls {
                        ca_file: abs(ca),
                        identity: match (self.cert_file, self.key_file) {
                            (Some(c), Some(k)) => Some((abs(c), abs(k))),
                            (None, None) => None,
                            _ => {
                                return Err(ConfigError::Invalid(
                                    "store.cert_file and store.key_file go together".into(),
                                ))
                            }
                        },
                    }),
                    None if self.cert_file.is_some() || self.key_file.is_some() => {
                        return Err(ConfigError::Invalid(
                            "store.cert_file needs store.ca_file (the members' CA)".into(),
                        ))
                    }
                    None => None,
                };
                for e in &endpoints {
                    let scheme_ok = match tls {
                        Some(_) => e.starts_with("https://"),
                        None => e.starts_with("http://"),
                    };
                    if !scheme_ok {
                        return Err(ConfigError::Invalid(format!(
                            "store.endpoints: {e:?} must start with {}",
                            if tls.is_some() {
                                "https:// (store.ca_file is set)"
                            } else {
                                "http:// (or set store.ca_file for https://)"
                            }
                        )));
                    }
                }
                let user = match (self.user, self.password_file) {
                    (Some(u), Some(p)) => Some((u, abs(p))),
                    (None, None) => None,
                    _ => {
                        return Err(ConfigError::Invalid(
                            "store.user and store.password_file go together".into(),
                        ))
                    }
                };
                let mut prefix = self.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_string());
                if !prefix.ends_with('/') {
                    prefix.push('/');
                }
                let leader_ttl = self.leader_ttl.unwrap_or(DEFAULT_LEADER_TTL);
                if leader_ttl < Duration::from_secs(3) || leader_ttl > Duration::from_secs(300) {
                    return Err(ConfigError::Invalid(
                        "store.leader_ttl must be between 3s and 300s".into(),
                    ));
                }
                let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
                if timeout < Duration::from_millis(100) {
                    return Err(ConfigError::Invalid(
                        "store.timeout must be at least 100ms".into(),
                    ));
                }
                let name = match self.name {
                    Some(n) => n,
                    None => nix::unistd::gethostname()
                        .ok()
                        .and_then(|h| h.into_string().ok())
                        .unwrap_or_else(|| "coordinator".into()),
                };
                if name.is_empty()
                    || name.len() > 64
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return Err(ConfigError::Invalid(format!(
                        "store.name {name:?}: 1 to 64 letters, digits, '-', '_' or '.'"
                    )));
                }
                Ok(StoreConfig::Etcd(EtcdSettings {
                    endpoints,
                    prefix,
                    timeout,
                    leader_ttl,
                    name,
                    tls,
                    user,
                }))
            }
            other => Err(ConfigError::Invalid(format!(
                "store.backend {other:?}: \"redb\" or \"etcd\""
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml_text: &str) -> StoreSection {
        toml::from_str(toml_text).expect("parse")
    }

    #[test]
    fn redb_is_the_default_and_keeps_store_path() {
        let c = StoreSection::default()
            .validate(Some("s.redb".into()), Path::new("/etc/drmesh"))
            .expect("valid");
        assert_eq!(
            c,
            StoreConfig::Redb {
                path: "/etc/drmesh/s.redb".into()
            }
        );
    }

    #[test]
    fn etcd_defaults_and_checks() {
        let c = section("backend = \"etcd\"\nname = \"c1\"")
            .validate(None, Path::new("/x"))
            .expect("valid");
        let StoreConfig::Etcd(e) = c else {
            panic!("etcd expected")
        };
        assert_eq!(e.endpoints, vec![DEFAULT_ETCD_ENDPOINT]);
        assert_eq!(e.prefix, "/drmesh/");
        assert_eq!(e.leader_ttl, DEFAULT_LEADER_TTL);
        for bad in [
            "backend = \"etcd\"\nendpoints = []",
            "backend = \"etcd\"\nendpoints = [\"https://a:2379\"]",
            "backend = \"etcd\"\nca_file = \"ca.pem\"\nendpoints = [\"http://a:2379\"]",
            "backend = \"etcd\"\ncert_file = \"c.pem\"",
            "backend = \"etcd\"\nuser = \"root\"",
            "backend = \"etcd\"\nleader_ttl = \"1s\"",
            "backend = \"etcd\"\npath = \"s.redb\"",
            "backend = \"etcd\"\nname = \"a b\"",
            "backend = \"redb\"\nendpoints = [\"http://a:2379\"]",
            "backend = \"consul\"",
        ] {
            assert!(
                section(bad).validate(None, Path::new("/x")).is_err(),
                "{bad}"
            );
        }
    }
}
