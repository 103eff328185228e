//! Asking authoritative servers directly: [`query`] one server, and [`confirm`] that
//! every authoritative server of a provider (or, without any, the provider's own API)
//! answers the expected address.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::Resolver;

use super::names::parse_name;
use super::{show_addrs, DnsError, DnsProvider};

/// How long one query of [`confirm`] may take before it counts as unanswered.
pub(super) const CONFIRM_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause between rounds of [`confirm`].
const CONFIRM_INTERVAL: Duration = Duration::from_millis(250);

/// Pause between reads of [`confirm`] through the API.
const API_CONFIRM_INTERVAL: Duration = Duration::from_secs(1);

/// Asks `server` directly, and only it, for the A and AAAA records of `name`.
///
/// Uses hickory-resolver with that single name server, recursion not desired, the cache
/// size 0 and a resolver built for this one call, so nothing is cached between calls; the
/// hosts file is not read. No records (NODATA or NXDOMAIN) is `Ok(vec![])`.
pub async fn query(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<IpAddr>, DnsError> {
    let fail = |message: String| DnsError::Query {
        server,
        name: name.to_string(),
        message,
    };
    let fqdn = parse_name(name)?;
    let mut udp = ConnectionConfig::udp();
    udp.port = server.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = server.port();
    let mut config = ResolverConfig::default();
    config.name_servers = vec![NameServerConfig::new(server.ip(), true, vec![udp, tcp])];
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    opts.recursion_desired = false;
    opts.attempts = 1;
    opts.timeout = timeout;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.ndots = 0;
    opts.try_tcp_on_error = true;
    let resolver = Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let lookup = tokio::time::timeout(timeout, resolver.lookup_ip(fqdn))
        .await
        .map_err(|_| {
            fail(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            ))
        })?;
    match lookup {
        Ok(found) => {
            let mut addrs: Vec<IpAddr> = found.iter().collect();
            addrs.sort();
            addrs.dedup();
            Ok(addrs)
        }
        Err(e) if e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// Polls every authoritative server of `provider` until each answers exactly
/// `[expected]`, for at most `timeout`. Ok lists what each answered ("127.0.0.1:5353
/// answers 198.18.0.12"); the error names each server that did not, with its answer.
///
/// A provider that lists no authoritative server is confirmed through its API
/// ([`DnsProvider::api_answer`]): Ok is then one line, "<describe()> API answers
/// 198.18.0.12". A provider with neither is an error.
pub async fn confirm(
    provider: &dyn DnsProvider,
    expected: IpAddr,
    timeout: Duration,
) -> Result<Vec<String>, DnsError> {
    let record = provider.record().to_string();
    let servers = provider.authoritative();
    if servers.is_empty() {
        return confirm_via_api(provider, expected, timeout).await;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let mut confirmed = Vec::new();
        let mut failures = Vec::new();
        for server in &servers {
            let left = deadline.saturating_duration_since(Instant::now());
            let per_query = left.clamp(Duration::from_millis(200), CONFIRM_QUERY_TIMEOUT);
            match query(*server, &record, per_query).await {
                Ok(addrs) if addrs == [expected] => {
                    confirmed.push(format!("{server} answers {expected}"))
                }
                Ok(addrs) => failures.push(format!(
                    "{server} answers {} instead of {expected}",
                    show_addrs(&addrs)
                )),
                Err(e) => failures.push(format!("{server} did not answer: {e}")),
            }
        }
        if failures.is_empty() {
            return Ok(confirmed);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(DnsError::NotConfirmed {
                record,
                within: humantime::format_duration(timeout).to_string(),
                failures,
            });
        }
        tokio::time::sleep(left.min(CONFIRM_INTERVAL)).await;
    }
}

/// [`confirm`] for a provider without authoritative servers: reads the record back
/// through the provider's API until it is exactly `[expected]`.
async fn confirm_via_api(
    provider: &dyn DnsProvider,
    expected: IpAddr,
    timeout: Duration,
) -> Result<Vec<String>, DnsError> {
    let record = provider.record().to_string();
    let deadline = Instant::now() + timeout;
    loop {
        let failure = match provider.api_answer().await {
            None => {
                return Err(DnsError::Config(format!(
                    "{} names no authoritative server to confirm {record} with",
                    provider.describe()
                )))
            }
            Some(Ok(addrs)) if addrs == [expected] => {
                return Ok(vec![format!(
                    "{} API answers {expected}",
                    provider.describe()
                )])
            }
            Some(Ok(addrs)) => format!(
                "{} API answers {} instead of {expected}",
                provider.describe(),
                show_addrs(&addrs)
            ),
            Some(Err(e)) => format!("{} API did not answer: {e}", provider.describe()),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(DnsError::NotConfirmed {
                record,
                within: humantime::format_duration(timeout).to_string(),
                failures: vec![failure],
            });
        }
        tokio::time::sleep(left.min(API_CONFIRM_INTERVAL)).await;
    }
}
