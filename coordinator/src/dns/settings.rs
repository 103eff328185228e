//! `[dns]` of `coordinator.toml`: the section as written ([`DnsSection`]) and its
//! validation into the checked [`DnsConfig`] that [`super::from_config`] builds a
//! provider from.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use drmesh_protocol::config::ConfigError;
use serde::Deserialize;

use super::names::{in_zone, normalize_name, parent_zone};
use super::sigv4::AwsCredentials;
use super::tsig::{TsigAlgorithmName, TsigKey};

/// `[dns]` as written. Which keys apply depends on `provider`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsSection {
    /// The record's name, e.g. `db.drmesh.example.com` (a missing final dot is added).
    /// Required.
    pub record: Option<String>,
    /// TTL of the record in seconds. Default 60 (the runbook's).
    pub ttl: Option<u32>,
    /// `embedded` (default; the quickstart's), `rfc2136` or `route53`.
    pub provider: Option<DnsProviderKind>,
    /// Zone the record belongs to. rfc2136: required; embedded: default the record's
    /// parent; route53: not used (the hosted zone is `hosted_zone_id`).
    pub zone: Option<String>,
    /// rfc2136: the primary server to send updates to (`ip:port`). Required.
    pub server: Option<SocketAddr>,
    /// rfc2136: name of the TSIG key. Required.
    pub tsig_key_name: Option<String>,
    /// rfc2136: `hmac-sha256` (default), `hmac-sha384` or `hmac-sha512`.
    pub tsig_algorithm: Option<TsigAlgorithmName>,
    /// rfc2136: file holding the key: a base64 secret, or a BIND `key` statement as
    /// `tsig-keygen` writes it. Required.
    pub tsig_secret_file: Option<PathBuf>,
    /// rfc2136: every authoritative server to confirm the change with. Default: `server`.
    /// route53: the zone's name servers to confirm with. Default: none (confirmed by
    /// reading the record back through the API).
    pub authoritative: Option<Vec<SocketAddr>>,
    /// route53: the hosted zone's id (`Z…`, or `/hostedzone/Z…`). Required.
    pub hosted_zone_id: Option<String>,
    /// route53: the API's base URL. Default `https://route53.amazonaws.com`.
    pub endpoint: Option<String>,
    /// route53: the region requests are signed for (SigV4). Default `us-east-1`.
    pub region: Option<String>,
    /// route53: the access key id; with `secret_access_key_file`. Default: the
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (/ `AWS_SESSION_TOKEN`) variables.
    pub access_key_id: Option<String>,
    /// route53: file holding the secret access key of `access_key_id`.
    pub secret_access_key_file: Option<PathBuf>,
    /// embedded: UDP and TCP address to serve the zone on. Default `127.0.0.1:5300`.
    pub listen: Option<SocketAddr>,
    /// embedded: the answer before the first failover, if the store holds none yet.
    pub initial: Option<IpAddr>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsProviderKind {
    #[default]
    Embedded,
    Rfc2136,
    Route53,
}

/// The checked `[dns]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// Fully qualified, lowercase, with the final dot.
    pub record: String,
    pub ttl: u32,
    pub provider: DnsProviderConfig,
}

/// The checked provider settings; names are fully qualified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsProviderConfig {
    Rfc2136 {
        server: SocketAddr,
        zone: String,
        tsig_key_name: String,
        /// The key's algorithm (from the key file when it names one).
        tsig_algorithm: TsigAlgorithmName,
        tsig_secret_file: PathBuf,
        /// Never empty: `server` when not configured.
        authoritative: Vec<SocketAddr>,
    },
    Embedded {
        listen: SocketAddr,
        zone: String,
        initial: Option<IpAddr>,
    },
    Route53 {
        /// Without the `/hostedzone/` prefix.
        hosted_zone_id: String,
        /// Without a trailing `/`.
        endpoint: String,
        region: String,
        /// Both or neither: neither means the `AWS_*` environment variables.
        access_key_id: Option<String>,
        secret_access_key_file: Option<PathBuf>,
        /// May be empty: then the change is confirmed through the API.
        authoritative: Vec<SocketAddr>,
    },
}

const DEFAULT_DNS_TTL: u32 = 60;
const DEFAULT_DNS_EMBEDDED_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5300);
const DEFAULT_ROUTE53_ENDPOINT: &str = "https://route53.amazonaws.com";
const DEFAULT_ROUTE53_REGION: &str = "us-east-1";

impl DnsSection {
    /// Applies defaults and checks the section; reads the TSIG key to prove it decodes.
    pub fn validate(self, base: &Path) -> Result<DnsConfig, ConfigError> {
        let bad = |why: String| ConfigError::Invalid(format!("[dns]: {why}"));
        let name = |what: &str, n: &str| normalize_name(n).map_err(|e| bad(format!("{what}: {e}")));
        let record = name(
            "record",
            self.record.as_deref().ok_or_else(|| {
                bad("record is required (e.g. record = \"db.drmesh.example.com\")".into())
            })?,
        )?;
        let ttl = self.ttl.unwrap_or(DEFAULT_DNS_TTL);
        if ttl == 0 || ttl > 86400 {
            return Err(bad(format!(
                "ttl {ttl} must be between 1 and 86400 seconds"
            )));
        }
        let kind = self.provider.unwrap_or_default();
        let refuse_keys =
            |provider: &str, keys: &[(&str, bool)]| match keys.iter().find(|(_, set)| *set) {
                Some((key, _)) => Err(bad(format!("{key} does not apply to provider {provider}"))),
                None => Ok(()),
            };
        let zone = |given: Option<&str>| -> Result<String, ConfigError> {
            let zone = match given {
                Some(z) => name("zone", z)?,
                None => parent_zone(&record).map_err(|e| bad(format!("zone: {e}")))?,
            };
            if !in_zone(&zone, &record).map_err(|e| bad(e.to_string()))? {
                return Err(bad(format!("record {record} is not inside zone {zone}")));
            }
            Ok(zone)
        };
        let route53_keys = [
            ("hosted_zone_id", self.hosted_zone_id.is_some()),
            ("endpoint", self.endpoint.is_some()),
            ("region", self.region.is_some()),
            ("access_key_id", self.access_key_id.is_some()),
            (
                "secret_access_key_file",
                self.secret_access_key_file.is_some(),
            ),
        ];
        let provider = match kind {
            DnsProviderKind::Embedded => {
                refuse_keys(
                    "embedded",
                    &[
                        ("server", self.server.is_some()),
                        ("tsig_key_name", self.tsig_key_name.is_some()),
                        ("tsig_algorithm", self.tsig_algorithm.is_some()),
                        ("tsig_secret_file", self.tsig_secret_file.is_some()),
                        ("authoritative", self.authoritative.is_some()),
                    ],
                )?;
                refuse_keys("embedded", &route53_keys)?;
                DnsProviderConfig::Embedded {
                    listen: self.listen.unwrap_or(DEFAULT_DNS_EMBEDDED_LISTEN),
                    zone: zone(self.zone.as_deref())?,
                    initial: self.initial,
                }
            }
            DnsProviderKind::Rfc2136 => {
                refuse_keys(
                    "rfc2136",
                    &[
                        ("listen", self.listen.is_some()),
                        ("initial", self.initial.is_some()),
                    ],
                )?;
                refuse_keys("rfc2136", &route53_keys)?;
                let server = self.server.ok_or_else(|| {
                    bad("server (ip:port of the primary) is required for rfc2136".into())
                })?;
                let zone = zone(Some(
                    self.zone
                        .as_deref()
                        .ok_or_else(|| bad("zone is required for rfc2136".into()))?,
                ))?;
                let key_name = self
                    .tsig_key_name
                    .ok_or_else(|| bad("tsig_key_name is required for rfc2136".into()))?;
                let file = self
                    .tsig_secret_file
                    .ok_or_else(|| bad("tsig_secret_file is required for rfc2136".into()))?;
                let file = if file.is_absolute() {
                    file
                } else {
                    base.join(file)
                };
                let key = TsigKey::load(&file, &key_name, self.tsig_algorithm)
                    .map_err(|e| bad(e.to_string()))?;
                let authoritative = match self.authoritative {
                    Some(list) if list.is_empty() => {
                        return Err(bad(
                            "authoritative, when given, needs at least one server".into()
                        ))
                    }
                    Some(list) => list,
                    None => vec![server],
                };
                DnsProviderConfig::Rfc2136 {
                    server,
                    zone,
                    tsig_key_name: key.name.clone(),
                    tsig_algorithm: key.algorithm,
                    tsig_secret_file: file,
                    authoritative,
                }
            }
            DnsProviderKind::Route53 => {
                refuse_keys(
                    "route53",
                    &[
                        ("zone", self.zone.is_some()),
                        ("server", self.server.is_some()),
                        ("tsig_key_name", self.tsig_key_name.is_some()),
                        ("tsig_algorithm", self.tsig_algorithm.is_some()),
                        ("tsig_secret_file", self.tsig_secret_file.is_some()),
                        ("listen", self.listen.is_some()),
                        ("initial", self.initial.is_some()),
                    ],
                )?;
                let given = self.hosted_zone_id.ok_or_else(|| {
                    bad(
                        "hosted_zone_id is required for route53 (e.g. \"Z0123456789ABCDEFGHIJ\")"
                            .into(),
                    )
                })?;
                let hosted_zone_id = given.trim().trim_start_matches("/hostedzone/").to_string();
                if hosted_zone_id.is_empty()
                    || !hosted_zone_id.chars().all(|c| c.is_ascii_alphanumeric())
                {
                    return Err(bad(format!(
                        "hosted_zone_id {given:?} is not a hosted zone id (letters and digits, e.g. \"Z0123456789ABCDEFGHIJ\")"
                    )));
                }
                let endpoint = self
                    .endpoint
                    .unwrap_or_else(|| DEFAULT_ROUTE53_ENDPOINT.to_string())
                    .trim_end_matches('/')
                    .to_string();
                let host = endpoint
                    .strip_prefix("https://")
                    .or_else(|| endpoint.strip_prefix("http://"));
                if !matches!(host, Some(h) if !h.is_empty() && !h.contains('/')) {
                    return Err(bad(format!(
                        "endpoint {endpoint:?} must be http:// or https:// and a host (no path), e.g. \"{DEFAULT_ROUTE53_ENDPOINT}\""
                    )));
                }
                let region = self
                    .region
                    .unwrap_or_else(|| DEFAULT_ROUTE53_REGION.to_string());
                if region.is_empty()
                    || !region
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                {
                    return Err(bad(format!(
                        "region {region:?} is not an AWS region (e.g. \"{DEFAULT_ROUTE53_REGION}\")"
                    )));
                }
                let secret_access_key_file = match (&self.access_key_id, self.secret_access_key_file) {
                    (Some(id), Some(file)) => {
                        if id.trim().is_empty() {
                            return Err(bad("access_key_id is empty".into()));
                        }
                        let file = if file.is_absolute() {
                            file
                        } else {
                            base.join(file)
                        };
                        // Proves the file is readable and not empty; the secret is read
                        // again when the provider is built and never kept here.
                        AwsCredentials::load(id, &file)
                            .map_err(|e| bad(e.to_string()))?;
                        Some(file)
                    }
                    (None, None) => None,
                    (Some(_), None) => {
                        return Err(bad(
                            "access_key_id needs secret_access_key_file (or leave both out to use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)".into(),
                        ))
                    }
                    (None, Some(_)) => {
                        return Err(bad(
                            "secret_access_key_file needs access_key_id".into(),
                        ))
                    }
                };
                let authoritative = match self.authoritative {
                    Some(list) if list.is_empty() => {
                        return Err(bad(
                            "authoritative, when given, needs at least one server (leave it out to confirm through the Route 53 API)".into()
                        ))
                    }
                    Some(list) => list,
                    None => Vec::new(),
                };
                DnsProviderConfig::Route53 {
                    hosted_zone_id,
                    endpoint,
                    region,
                    access_key_id: self.access_key_id.map(|id| id.trim().to_string()),
                    secret_access_key_file,
                    authoritative,
                }
            }
        };
        Ok(DnsConfig {
            record,
            ttl,
            provider,
        })
    }
}
