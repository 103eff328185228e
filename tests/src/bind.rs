//! A real BIND 9 (`named`) for the DNS tests: one primary zone that accepts RFC 2136
//! updates signed with a TSIG key made by `tsig-keygen`, on a free port, with its config,
//! zone, journal and log in its own temporary directory. `named` is killed on drop.
//!
//! `bash scripts/install-deps.sh` installs BIND 9 (packages bind9, bind9-utils,
//! bind9-dnsutils). A missing BIND is a test failure, never a skip.

use std::fs;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{wait_for, Proc};

const HINT: &str =
    "BIND 9 is missing: apt-get install -y bind9 bind9-utils bind9-dnsutils (or run scripts/install-deps.sh)";
/// Name of the key allowed to update the zone (the wrong key has the same name).
const KEY_NAME: &str = "drmesh-key";
const STARTUP: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 3;

/// A running `named` serving one zone.
pub struct Bind {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    zone: String,
    record: String,
    proc: Proc,
}

/// `name` with a final dot.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// The first of `paths` that exists, or a panic telling how to install BIND.
fn program(paths: &[&str]) -> PathBuf {
    paths
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{HINT} (looked for {})", paths.join(", ")))
}

fn named() -> PathBuf {
    program(&["/usr/sbin/named", "/usr/bin/named", "/usr/local/sbin/named"])
}

fn dig_program() -> PathBuf {
    program(&["/usr/bin/dig", "/usr/local/bin/dig"])
}

/// A port free for both UDP and TCP on `ip` a moment ago.
fn free_port(ip: IpAddr) -> u16 {
    for _ in 0..20 {
        let udp = UdpSocket::bind((ip, 0)).expect("bind UDP port 0");
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on {ip}")
}

/// Runs `tsig-keygen -a hmac-sha256 NAME` and writes its output to `path`.
fn keygen(path: &Path) {
    let tool = program(&["/usr/sbin/tsig-keygen", "/usr/bin/tsig-keygen"]);
    let out = Command::new(tool)
        .args(["-a", "hmac-sha256", KEY_NAME])
        .output()
        .unwrap_or_else(|e| panic!("run tsig-keygen: {e}; {HINT}"));
    assert!(
        out.status.success(),
        "tsig-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(path, &out.stdout).expect("write key file");
}

impl Bind {
    /// Starts `named` on a free port of `listen_ip`, authoritative for `zone`, with
    /// `record` holding `initial` (A or AAAA, TTL 60), and waits until it answers.
    pub fn start(listen_ip: IpAddr, zone: &str, record: &str, initial: IpAddr) -> Bind {
        let named = named();
        let dir = tempfile::tempdir().expect("tempdir");
        let zone = fqdn(zone);
        let record = fqdn(record);
        let key = dir.path().join("drmesh-key.key");
        keygen(&key);
        keygen(&dir.path().join("wrong.key"));
        let zone_file = dir.path().join("zone.db");
        let rtype = |ip: IpAddr| if ip.is_ipv4() { "A" } else { "AAAA" };
        let (ns_ip, ns_type) = if listen_ip.is_unspecified() {
            ("127.0.0.1".to_string(), "A")
        } else {
            (listen_ip.to_string(), rtype(listen_ip))
        };
        fs::write(
            &zone_file,
            format!(
                "$TTL 60\n@ IN SOA ns.{zone} hostmaster.{zone} 1 3600 600 86400 60\n@ IN NS ns.{zone}\nns.{zone} IN {ns_type} {ns_ip}\n{record} IN {} {initial}\n",
                rtype(initial)
            ),
        )
        .expect("write zone file");
        let d = dir.path().display();
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port(listen_ip);
            let listen = if listen_ip.is_ipv4() {
                format!("listen-on port {port} {{ {listen_ip}; }};\n  listen-on-v6 {{ none; }};")
            } else {
                format!("listen-on {{ none; }};\n  listen-on-v6 port {port} {{ {listen_ip}; }};")
            };
            let conf = dir.path().join("named.conf");
            fs::write(
                &conf,
                format!(
                    "options {{\n  directory \"{d}\";\n  pid-file \"{d}/named.pid\";\n  session-keyfile \"{d}/session.key\";\n  managed-keys-directory \"{d}\";\n  {listen}\n  recursion no;\n  dnssec-validation no;\n  notify no;\n  allow-query {{ any; }};\n}};\ncontrols {{ }};\ninclude \"{}\";\nzone \"{zone}\" {{\n  type primary;\n  file \"{}\";\n  allow-update {{ key \"{KEY_NAME}\"; }};\n}};\n",
                    key.display(),
                    zone_file.display()
                ),
            )
            .expect("write named.conf");
            let conf_s = conf.display().to_string();
            let mut proc = Proc::spawn(
                "named",
                &named,
                &["-g", "-n", "1", "-c", &conf_s],
                &dir.path().join("named.log"),
            );
            let addr = SocketAddr::new(listen_ip, port);
            let up = wait_for(STARTUP, || {
                if dig_short(addr, &record, rtype(initial)) == vec![initial] {
                    Some(true)
                } else if !proc.is_running() {
                    Some(false)
                } else {
                    None
                }
            });
            match up {
                Some(true) => {
                    return Bind {
                        dir,
                        addr,
                        zone,
                        record,
                        proc,
                    }
                }
                Some(false) => last_log = proc.log_text(),
                None => panic!(
                    "named did not answer {record} at {addr} within {STARTUP:?}; log:\n{}",
                    proc.log_text()
                ),
            }
        }
        panic!("named exited during startup {START_ATTEMPTS} times; last log:\n{last_log}")
    }

    /// Where `named` listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn zone(&self) -> &str {
        &self.zone
    }

    pub fn record(&self) -> &str {
        &self.record
    }

    pub fn key_name(&self) -> &str {
        KEY_NAME
    }

    /// The key `named` accepts updates with, as `tsig-keygen` wrote it.
    pub fn secret_file(&self) -> PathBuf {
        self.dir.path().join("drmesh-key.key")
    }

    /// A well-formed key with the same name and algorithm but another secret.
    pub fn wrong_secret_file(&self) -> PathBuf {
        self.dir.path().join("wrong.key")
    }

    /// The record's A and AAAA addresses as `named` answers them (`dig +short`).
    pub fn answer(&self) -> Vec<IpAddr> {
        let mut all = dig_short(self.addr, &self.record, "A");
        all.extend(dig_short(self.addr, &self.record, "AAAA"));
        all
    }

    /// The record's A and AAAA records as (TTL, address).
    pub fn answer_with_ttl(&self) -> Vec<(u32, IpAddr)> {
        let mut out = Vec::new();
        for rtype in ["A", "AAAA"] {
            let text = dig(self.addr, &self.record, rtype, &["+noall", "+answer"]);
            for line in text.lines() {
                // NAME TTL CLASS TYPE DATA
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() == 5 && f[3] == rtype {
                    if let (Ok(ttl), Ok(ip)) = (f[1].parse(), f[4].parse()) {
                        out.push((ttl, ip));
                    }
                }
            }
        }
        out
    }

    /// `named`'s log so far.
    pub fn log(&self) -> String {
        self.proc.log_text()
    }
}

fn dig(server: SocketAddr, name: &str, rtype: &str, extra: &[&str]) -> String {
    let out = Command::new(dig_program())
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .args(["+time=1", "+tries=1", "+norecurse"])
        .args(extra)
        .args([name, rtype])
        .output()
        .unwrap_or_else(|e| panic!("run dig: {e}; {HINT}"));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn dig_short(server: SocketAddr, name: &str, rtype: &str) -> Vec<IpAddr> {
    dig(server, name, rtype, &["+short"])
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}
