//! `drmesh quickstart`: a whole mesh on this machine, in the foreground.
//!
//! It makes (or reuses, when run again on the same directory) a CA and certificates, one
//! PostgreSQL primary in `us-west-2` and streaming standbys in `us-east-1` and
//! `eu-west-1`, a coordinator, and one agent per region; writes `DIR/drmesh.env`; and on
//! Ctrl-C (or SIGTERM) stops everything it started.
//!
//! Every region is set up as a real deployment would be, so that any of them can be the
//! primary: each agent has the same `[database]` table (its own cluster, the one
//! encrypted database repository, the `staging` and `forensics` recovery environments),
//! and every cluster has the same `archive_command`, naming that repository and its key
//! — so whichever server is primary archives its WAL (and, after a promotion, its
//! timeline history) into the one repository, and backups run next to it. Once up, the
//! quickstart supervises its coordinator and agents as systemd's `Restart=on-failure`
//! would: a part that dies is reported and started again a few seconds later, and the
//! rest keeps running. PostgreSQL is never restarted by it: a stopped server may be a
//! fenced one.
//!
//! Each region's PostgreSQL has its own loopback address (127.0.0.1, .2, .3), so the
//! database's DNS name, `db.drmesh.local`, served by the coordinator's embedded DNS
//! server, has a different answer after a failover. Once the mesh is up the quickstart
//! creates the runbook's DR plan, `production_dr_plan`; its notification channels,
//! `slack` and `email`, deliver to local sinks that append to `DIR/notifications/`.
//!
//! With `--ha` the one coordinator becomes three, one per region, on a three-member etcd
//! cluster the quickstart runs too (`quickstart/ha.rs`): the agents know all three,
//! `drmesh.env` names all three URLs, and a killed leader is replaced by another.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use drmesh_pg::local::{self, LocalCluster, PgBin, PgNetwork};
use drmesh_protocol::api::{AgentState, DrPlan, DrStatus, Role, Standing};
use drmesh_protocol::pki::{self, Validity};
use drmesh_protocol::{AgentId, RegionId};
use serde::{Deserialize, Serialize};

use crate::client::Client;

mod ha;

/// The regions of the quickstart mesh; the first holds the primary.
const REGIONS: [&str; 3] = ["us-west-2", "us-east-1", "eu-west-1"];

/// The database's DNS name, served by the coordinator's embedded DNS server.
const DB_NAME: &str = "db.drmesh.local";

/// The runbook's DR plan ("Create Disaster Recovery Plan"); its failover regions are the
/// quickstart's standby regions, its channels the quickstart's local sinks.
const PLAN_ID: &str = "production_dr_plan";

fn runbook_plan() -> serde_json::Value {
    serde_json::json!({
        "id": PLAN_ID,
        "name": "Production Disaster Recovery Plan",
        "rpo": "1h",
        "rto": "4h",
        "failoverRegions": ["us-east-1", "eu-west-1"],
        "healthCheckInterval": 300000,
        "automaticFailover": false,
        "notificationChannels": ["slack", "email"],
        "testInterval": 604800000
    })
}

/// The point-in-time recovery environments the runbook names
/// (`"targetEnvironment": "staging"`, `"forensics"`); every region's agent has both.
const ENVIRONMENTS: [&str; 2] = ["staging", "forensics"];

/// PostgreSQL's `archive_timeout`, and the agents' wait for a backup's WAL: a segment is
/// archived at least this often while anything is written, well within the plan's RPO.
const ARCHIVE_TIMEOUT: &str = "60s";

/// How long a dead coordinator or agent stays down before it is started again, and how
/// many restarts within [`RESTART_WINDOW`] are tried before the quickstart gives up on
/// it (systemd's `RestartSec` and `StartLimitBurst`).
const RESTART_DELAY: Duration = Duration::from_secs(3);
const RESTART_BURST: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(300);

/// The loopback address of region `i`'s PostgreSQL: 127.0.0.1, 127.0.0.2, …
fn region_host(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i as u8))
}

#[derive(clap::Args)]
pub struct Opts {
    /// Directory for everything the mesh keeps (created if missing, reused if present).
    #[arg(long)]
    dir: PathBuf,
    /// REST API port on 127.0.0.1.
    #[arg(long, default_value_t = 3000)]
    http_port: u16,
    /// Heartbeat interval of the agents and coordinator.
    #[arg(long, default_value = "500ms")]
    heartbeat_interval: humantime::Duration,
    /// UDP and TCP port of the embedded DNS server (on 127.0.0.1) that answers for
    /// db.drmesh.local; 0 picks a free port (printed, and in DIR/drmesh.env).
    #[arg(long, default_value_t = 0)]
    dns_port: u16,
    /// Three coordinators, one per region, on a three-member etcd cluster (also run
    /// here, from Debian's etcd-server), instead of one on a local file: kill the
    /// leader and another takes over. The first coordinator's REST API is on
    /// --http-port, its DNS server on --dns-port.
    #[arg(long)]
    ha: bool,
    /// With --ha: the leader's lease ([store] leader_ttl); another coordinator leads
    /// within about this long after the leader dies.
    #[arg(long, default_value = "5s", requires = "ha")]
    leader_ttl: humantime::Duration,
    /// Serve the REST API over HTTPS (`http_tls`), with the coordinator certificate
    /// the quickstart's CA issues for 127.0.0.1 and localhost; DIR/drmesh.env then sets
    /// DRMESH_CA_CERT for the CLI. Without it, plain HTTP on 127.0.0.1.
    #[arg(long)]
    tls: bool,
}

/// Remembered between runs so a second quickstart on the same directory reuses clusters.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    pg_ports: Vec<u16>,
    /// Each cluster's address; absent in directories made before clusters had their own
    /// (all on 127.0.0.1 then).
    #[serde(default)]
    pg_hosts: Vec<IpAddr>,
    /// The port of each region's recovery environments, by `region/environment`; absent
    /// in directories made before the environments existed (picked then).
    #[serde(default)]
    env_ports: BTreeMap<String, u16>,
    /// The etcd members' and the other coordinators' ports, from the first `--ha` run;
    /// kept by runs without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ha: Option<ha::HaState>,
}

/// A process the quickstart runs and, once the mesh is up, keeps running.
struct Part {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    /// How long it stays dead before it is started again.
    restart_delay: Duration,
    /// Absent while it is dead and waiting to be started again.
    child: Option<Child>,
    /// When it was found dead.
    died: Option<Instant>,
    /// When it was restarted, within the last [`RESTART_WINDOW`].
    restarts: Vec<Instant>,
    /// Restarted too often: left dead.
    given_up: bool,
}

/// Everything started, stopped in reverse on the way out (also on error).
struct Mesh {
    parts: Vec<Part>,
    clusters: Vec<LocalCluster>,
    /// The recovery environments' data directories: a point-in-time recovery leaves a
    /// server running in one, stopped with the mesh.
    environments: Vec<PathBuf>,
    bin: PgBin,
}

impl Mesh {
    /// Starts `program` as the part `name`, its output into `log` (a new file); once
    /// dead, it is started again `restart_delay` later.
    fn start(
        &mut self,
        name: &str,
        program: &Path,
        args: &[&str],
        log: &Path,
        restart_delay: Duration,
    ) -> anyhow::Result<()> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let child = spawn(name, program, &args, log, false)?;
        self.parts.push(Part {
            name: name.to_string(),
            program: program.to_path_buf(),
            args,
            log: log.to_path_buf(),
            restart_delay,
            child: Some(child),
            died: None,
            restarts: Vec::new(),
            given_up: false,
        });
        Ok(())
    }

    /// One round of supervision: a part found dead is reported, and started again
    /// its restart delay later unless it was restarted [`RESTART_BURST`] times within
    /// [`RESTART_WINDOW`]. The rest of the mesh runs on meanwhile.
    fn supervise(&mut self) {
        let now = Instant::now();
        for part in self.parts.iter_mut() {
            if let Some(child) = part.child.as_mut() {
                match child.try_wait() {
                    Ok(None) => continue,
                    Ok(Some(status)) => eprintln!(
                        "{} exited unexpectedly ({status}); the rest of the mesh runs on, and \
                         it is started again in {} s (see {})",
                        part.name,
                        part.restart_delay.as_secs(),
                        part.log.display()
                    ),
                    Err(e) => eprintln!("{}: {e}; starting it again", part.name),
                }
                part.child = None;
                part.died = Some(now);
                continue;
            }
            let Some(died) = part.died else { continue };
            if part.given_up || now.duration_since(died) < part.restart_delay {
                continue;
            }
            part.restarts
                .retain(|t| now.duration_since(*t) < RESTART_WINDOW);
            if part.restarts.len() >= RESTART_BURST {
                eprintln!(
                    "{} died {} times within {} s: left stopped (see {})",
                    part.name,
                    RESTART_BURST + 1,
                    RESTART_WINDOW.as_secs(),
                    part.log.display()
                );
                part.given_up = true;
                continue;
            }
            match spawn(&part.name, &part.program, &part.args, &part.log, true) {
                Ok(child) => {
                    println!("restarted {} (pid {})", part.name, child.id());
                    part.child = Some(child);
                    part.died = None;
                    part.restarts.push(now);
                }
                Err(e) => {
                    eprintln!(
                        "{}: {e:#}; trying again in {} s",
                        part.name,
                        part.restart_delay.as_secs()
                    );
                    part.died = Some(now);
                    part.restarts.push(now);
                }
            }
        }
    }

    fn stop(&mut self) {
        for part in self.parts.iter_mut().rev() {
            let name = &part.name;
            let Some(child) = part.child.as_mut() else {
                continue;
            };
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        eprintln!("{name} did not stop in 10 s; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        self.parts.clear();
        for cluster in self.clusters.iter().rev() {
            if let Err(e) = cluster.stop() {
                eprintln!("stop PostgreSQL {}: {e}", cluster.name);
                let _ = cluster.stop_immediate();
            }
        }
        self.clusters.clear();
        for data in self.environments.drain(..) {
            if !data.join("postmaster.pid").exists() {
                continue;
            }
            let name = data.display().to_string();
            match LocalCluster::open(&self.bin, &name, &data, 0) {
                Ok(server) => {
                    if let Err(e) = server.stop() {
                        eprintln!("stop the recovered server in {name}: {e}");
                        let _ = server.stop_immediate();
                    }
                }
                Err(e) => eprintln!("stop the recovered server in {name}: {e}"),
            }
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.stop();
    }
}

fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("find this program's path")?;
    let candidate = exe.with_file_name(name);
    if candidate.exists() {
        return Ok(candidate);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let c = dir.join(name);
            if c.exists() {
                return Ok(c);
            }
        }
    }
    bail!(
        "{name} not found next to {} or on PATH: build it with `cargo build --workspace`",
        exe.display()
    )
}

/// Starts `program`, its output into `log`: a new file, or appended to when `append`
/// (a restart keeps what the dead process wrote).
fn spawn(
    name: &str,
    program: &Path,
    args: &[String],
    log: &Path,
    append: bool,
) -> anyhow::Result<Child> {
    let out = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(log)
        .with_context(|| format!("create {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Children must not take the terminal's Ctrl-C themselves: the quickstart stops
        // them in order.
        .process_group(0);
    cmd.spawn()
        .with_context(|| format!("start {name} ({})", program.display()))
}

/// The one key of both repositories, `DIR/repository.key` (32 random bytes in hex; a
/// directory made when only the documents were encrypted has it as `documents.key`,
/// renamed). PostgreSQL's `archive_command` reads it, so it belongs to the postgres user
/// when the clusters run as that user.
fn repository_key(dir: &Path) -> anyhow::Result<PathBuf> {
    let key = dir.join("repository.key");
    let old = dir.join("documents.key");
    if !key.exists() && old.exists() {
        fs::rename(&old, &key).with_context(|| format!("rename {}", old.display()))?;
    }
    if !key.exists() {
        let mut bytes = [0u8; 32];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
            .context("read /dev/urandom")?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&key, &hex)?;
    }
    local::hand_to_postgres(&key)?;
    Ok(key)
}

/// The `[documents]` table of the primary region's agent: `DIR/uploads` (with a sample
/// document the first time) into an encrypted repository under `DIR/backups/documents`.
fn documents_section(dir: &Path, key: &Path) -> anyhow::Result<String> {
    let uploads = dir.join("uploads");
    if !uploads.exists() {
        let sample = uploads.join("documents/doc-0001");
        fs::create_dir_all(&sample).with_context(|| format!("create {}", sample.display()))?;
        fs::write(
            sample.join("welcome.txt"),
            "A sample upload: drmesh backs up everything under this directory.\n",
        )?;
    }
    Ok(format!(
        "\n[documents]\nsource = {}\nkey_file = {}\narchive_dir = {}\nrestore_dir = {}\n\n[[documents.locations]]\nname = \"local\"\nurl = {}\n",
        toml_str(&uploads),
        toml_str(key),
        toml_str(&dir.join("backups/documents/snapshots")),
        toml_str(&dir.join("restores")),
        toml_str(&dir.join("backups/documents/repo")),
    ))
}

/// The database repository every region archives into and backs up to.
fn database_repo(dir: &Path) -> PathBuf {
    dir.join("backups/database")
}

/// Creates the encrypted database repository (unless it exists) and gives it to the
/// postgres user, whose `archive_command` writes into it.
fn init_database_repo(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    key: &Path,
) -> anyhow::Result<()> {
    let repo = database_repo(dir);
    local::prepare_parent_dir(&repo)?;
    let options = drmesh_repo::RepoOptions {
        location: drmesh_repo::Location::new(repo.display().to_string()),
        key: drmesh_repo::KeySource::KeyFile(key.to_path_buf()),
    };
    runtime
        .block_on(drmesh_repo::Repository::open_or_init(&options))
        .with_context(|| format!("open the database repository {}", repo.display()))?;
    local::hand_to_postgres(&repo)?;
    Ok(())
}

/// Where region `region`'s agent recovers into environment `env`.
fn environment_dir(dir: &Path, region: &str, env: &str) -> PathBuf {
    dir.join("environments").join(region).join(env)
}

/// The `[database]` table of region `region`'s agent, the same in every region but for
/// its own cluster and its environments' directories and ports: what lets any region
/// back up, archive and recover once it holds the primary.
fn database_section(
    dir: &Path,
    region: &str,
    cluster: &LocalCluster,
    key: &Path,
    env_ports: &BTreeMap<String, u16>,
) -> anyhow::Result<String> {
    let mut text = format!(
        "\n[database]\ndata_dir = {}\nrepository = {}\nkey_file = {}\narchive_timeout = \"{ARCHIVE_TIMEOUT}\"\n",
        toml_str(&cluster.data_dir),
        toml_str(&database_repo(dir)),
        toml_str(key),
    );
    for env in ENVIRONMENTS {
        let data = environment_dir(dir, region, env);
        local::prepare_parent_dir(data.parent().unwrap_or(dir))?;
        let port = env_ports
            .get(&format!("{region}/{env}"))
            .with_context(|| format!("no port for the {env} environment of {region}"))?;
        text += &format!(
            "\n[database.environments.{env}]\ndata_dir = {}\nport = {port}\n",
            toml_str(&data)
        );
    }
    Ok(text)
}

/// Every cluster's archiving, the same on all of them (a standby made by
/// `pg_basebackup`, or rewound by `pg_rewind`, copies the primary's and needs no other):
/// `drmesh repo wal-push` into the database repository with its key, named on the
/// command line so nothing in PostgreSQL's environment changes it, and `archive_timeout`
/// so a quiet primary still archives within it. A standby archives nothing until it is
/// promoted. `archive_mode` needs a restart, the rest a reload.
fn archive_wal(cluster: &LocalCluster, dir: &Path, key: &Path) -> anyhow::Result<()> {
    use drmesh_repo::shell_quote;
    let exe = std::env::current_exe().context("find this program's path")?;
    let command = format!(
        "{} repo wal-push --repo {} --key-file {} %p",
        shell_quote(&exe.to_string_lossy())?,
        shell_quote(&database_repo(dir).to_string_lossy())?,
        shell_quote(&key.to_string_lossy())?,
    );
    cluster.psql(&format!(
        "alter system set archive_command = '{}'",
        command.replace('\'', "''")
    ))?;
    cluster.psql(&format!(
        "alter system set archive_timeout = '{ARCHIVE_TIMEOUT}'"
    ))?;
    if cluster.psql("show archive_mode")? == "off" {
        cluster.psql("alter system set archive_mode = 'on'")?;
        cluster.stop()?;
        cluster.start()?;
    } else {
        cluster.psql("select pg_reload_conf()")?;
    }
    Ok(())
}

/// Takes the first full database backup through the API and waits for it; a failure
/// is reported, and the mesh keeps running.
fn first_backup(client: &Client, mesh: &mut Mesh) {
    use drmesh_protocol::api::{BackupAccepted, BackupStatus, DatabaseBackup};
    let path = "/v1/backup-recovery/database/backup/full";
    let body = serde_json::json!({ "tags": { "type": "quickstart" } });
    let accepted: anyhow::Result<BackupAccepted> = (|| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match client.post(path, &body) {
                Ok(a) => return Ok(a),
                // 503 until the primary's agent has reported its role.
                Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("503") => {
                    std::thread::sleep(Duration::from_millis(300));
                }
                Err(e) => return Err(e),
            }
        }
    })();
    let accepted = match accepted {
        Ok(a) => a,
        Err(e) => {
            eprintln!("the first database backup could not start: {e:#}");
            return;
        }
    };
    println!("first full database backup {} …", accepted.backup_id);
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while std::time::Instant::now() < deadline && check_children(mesh).is_ok() {
        let current: anyhow::Result<DatabaseBackup> = client.get(&format!(
            "/v1/backup-recovery/database/backups/{}",
            accepted.backup_id
        ));
        match current {
            Ok(b) if b.status == BackupStatus::InProgress => {}
            Ok(b) if b.status == BackupStatus::Failed => {
                eprintln!(
                    "the first database backup failed: {}",
                    b.error.unwrap_or_default()
                );
                return;
            }
            Ok(b) => {
                println!(
                    "first full database backup {} completed (WAL {} .. {})",
                    b.backup_id,
                    b.start_lsn.unwrap_or_default(),
                    b.stop_lsn.unwrap_or_default()
                );
                return;
            }
            Err(e) => {
                eprintln!("the first database backup: {e:#}");
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("the first database backup is still running; see drmesh backups list");
}

/// Creates the runbook's DR plan unless it exists (an earlier run on the same directory
/// made it, or an operator changed it: either way it is left as it is). A failure is
/// reported, and the mesh keeps running.
fn ensure_plan(client: &Client) -> Option<DrPlan> {
    let path = format!("/v1/backup-recovery/disaster-recovery/plans/{PLAN_ID}");
    if let Ok(plan) = client.get::<DrPlan>(&path) {
        println!("DR plan {PLAN_ID} exists; left as it is");
        return Some(plan);
    }
    match client.post::<DrPlan>(
        "/v1/backup-recovery/disaster-recovery/plans",
        &runbook_plan(),
    ) {
        Ok(plan) => {
            println!("created the runbook's DR plan {}", plan.id);
            Some(plan)
        }
        Err(e) => {
            eprintln!("the runbook's DR plan could not be created: {e:#}");
            None
        }
    }
}

/// Local stand-ins for the runbook's notification channels: a Slack-compatible webhook
/// and an SMTP server on 127.0.0.1, threads of this process that append what they
/// receive to `slack.log` and `email.log` in their directory.
struct Sinks {
    http: SocketAddr,
    smtp: SocketAddr,
}

impl Sinks {
    fn start(dir: &Path) -> anyhow::Result<Sinks> {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let http = TcpListener::bind("127.0.0.1:0").context("bind the Slack sink")?;
        let smtp = TcpListener::bind("127.0.0.1:0").context("bind the SMTP sink")?;
        let sinks = Sinks {
            http: http.local_addr()?,
            smtp: smtp.local_addr()?,
        };
        accept_each(http, dir.join("slack.log"), serve_webhook);
        accept_each(smtp, dir.join("email.log"), serve_smtp);
        Ok(sinks)
    }

    /// The `[notify.slack]` and `[notify.email]` tables of the coordinator.
    fn config(&self) -> String {
        format!(
            "\n[notify.slack]\ntype = \"slack\"\nurl = \"http://{}/slack\"\n\n[notify.email]\ntype = \"email\"\nsmtp_host = \"{}\"\nsmtp_port = {}\nsecurity = \"none\"\nfrom = \"drmesh@drmesh.local\"\nto = [\"oncall@drmesh.local\"]\n",
            self.http,
            self.smtp.ip(),
            self.smtp.port(),
        )
    }
}

fn accept_each(
    listener: TcpListener,
    log: PathBuf,
    serve: fn(TcpStream, &Path) -> std::io::Result<()>,
) {
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                if let Err(e) = serve(conn, &log) {
                    eprintln!("notification sink {}: {e}", log.display());
                }
            });
        }
    });
}

fn append(log: &Path, text: &str) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new().create(true).append(true).open(log)?;
    writeln!(f, "{} {}", chrono::Utc::now().to_rfc3339(), text.trim_end())
}

/// One HTTP request: its body is appended to the log, the answer is 200.
fn serve_webhook(conn: TcpStream, log: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    append(log, &String::from_utf8_lossy(&body))?;
    (&conn).write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    )
}

/// One SMTP session: every message is appended to the log and accepted.
fn serve_smtp(conn: TcpStream, log: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = &conn;
    out.write_all(b"220 drmesh-quickstart ESMTP notification sink\r\n")?;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_ascii_uppercase();
        if command.starts_with("DATA") {
            out.write_all(b"354 end the message with a line holding only .\r\n")?;
            let mut message = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                let text = line.trim_end_matches(['\r', '\n']);
                if text == "." {
                    break;
                }
                message.push_str(text.strip_prefix('.').unwrap_or(text));
                message.push('\n');
            }
            append(log, &message)?;
            out.write_all(b"250 OK\r\n")?;
        } else if command.starts_with("QUIT") {
            return out.write_all(b"221 bye\r\n");
        } else if command.starts_with("EHLO") || command.starts_with("HELO") {
            out.write_all(b"250 drmesh-quickstart\r\n")?;
        } else {
            out.write_all(b"250 OK\r\n")?;
        }
    }
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn toml_str(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

pub fn run(opts: Opts) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let dir = &opts.dir;
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    // The postgres user must be able to reach the clusters below this directory.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    for sub in ["ca", "coordinator", "agents", "logs", "pg"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let heartbeat = humantime::format_duration(*opts.heartbeat_interval).to_string();
    let coordinator_bin = sibling_binary("drmesh-coordinator")?;
    let agent_bin = sibling_binary("drmesh-agent")?;
    let bin = PgBin::find()?;
    // Found before anything starts: a missing etcd stops the quickstart at once.
    let etcd_bin = if opts.ha {
        ha::check_leader_ttl(*opts.leader_ttl)?;
        Some(ha::etcd_program()?)
    } else {
        None
    };

    // 1. Certificates.
    let ca_dir = dir.join("ca");
    if !pki::ca_files(&ca_dir).cert.exists() {
        pki::init_ca(&ca_dir, "drmesh quickstart CA")?;
    }
    let coord_files = pki::coordinator_files(&dir.join("coordinator"));
    if !coord_files.cert.exists() {
        pki::issue_coordinator(
            &ca_dir,
            &["localhost".into(), "127.0.0.1".into()],
            Validity::days(365),
            &coord_files,
        )?;
    }

    // 2. PostgreSQL: one primary, two standbys streaming from it.
    let state_path = dir.join("quickstart.json");
    let mut state: State = match fs::read(&state_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("read {}", state_path.display()))?,
        Err(_) => State {
            pg_ports: (0..REGIONS.len())
                .map(|_| local::free_port())
                .collect::<Result<_, _>>()?,
            pg_hosts: (0..REGIONS.len()).map(region_host).collect(),
            env_ports: BTreeMap::new(),
            ha: None,
        },
    };
    if state.pg_hosts.len() != REGIONS.len() {
        state.pg_hosts = vec![IpAddr::V4(Ipv4Addr::LOCALHOST); REGIONS.len()];
    }
    for region in REGIONS {
        for env in ENVIRONMENTS {
            if let std::collections::btree_map::Entry::Vacant(e) =
                state.env_ports.entry(format!("{region}/{env}"))
            {
                e.insert(local::free_port()?);
            }
        }
    }
    if opts.ha {
        let taken: Vec<u16> = state
            .pg_ports
            .iter()
            .chain(state.env_ports.values())
            .chain([&opts.http_port, &opts.dns_port])
            .copied()
            .collect();
        state.ha = Some(ha::HaState::complete(state.ha.take(), &taken)?);
    }
    fs::write(&state_path, serde_json::to_vec_pretty(&state)?)?;
    let pg_dir = dir.join("pg");
    local::prepare_parent_dir(&pg_dir)?;
    let key = repository_key(&dir)?;
    init_database_repo(&signals.runtime, &dir, &key)?;
    let mut mesh = Mesh {
        parts: Vec::new(),
        clusters: Vec::new(),
        environments: REGIONS
            .iter()
            .flat_map(|r| ENVIRONMENTS.map(|e| environment_dir(&dir, r, e)))
            .collect(),
        bin: bin.clone(),
    };
    for (i, region) in REGIONS.iter().enumerate() {
        let data = pg_dir.join(region);
        let (host, port) = (state.pg_hosts[i], state.pg_ports[i]);
        // A standby with an address of its own also listens on 127.0.0.1: a later run
        // reopens it with `LocalCluster::open`, which reaches it there.
        let mut listen_addresses = vec![host];
        if host != IpAddr::V4(Ipv4Addr::LOCALHOST) {
            listen_addresses.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        let network = PgNetwork {
            listen_addresses,
            host: Some(host),
            // Standbys copy the primary's pg_hba.conf; any region may become primary.
            trust: vec!["127.0.0.0/8".into()],
            command_prefix: Vec::new(),
        };
        let cluster = if data.join("PG_VERSION").exists() {
            LocalCluster::open(&bin, region, &data, port)?
        } else if i == 0 {
            println!("initdb {region} (primary) on {host}:{port}");
            LocalCluster::init_primary_on(&bin, region, &data, port, &network)?
        } else {
            println!("pg_basebackup {region} (standby) on {host}:{port}");
            let primary = &mesh.clusters[0];
            LocalCluster::init_standby_from(
                &bin,
                region,
                primary.host(),
                primary.port,
                &data,
                port,
                &network,
            )?
        };
        if !cluster.is_running() {
            cluster.start()?;
        }
        archive_wal(&cluster, &dir, &key)?;
        mesh.clusters.push(cluster);
    }

    // 3. The coordinator, or (--ha) the etcd cluster and one coordinator per region,
    // with a fresh admin token written into the store first.
    let sinks = Sinks::start(&dir.join("notifications"))?;
    let base = CoordinatorBase {
        program: coordinator_bin,
        heartbeat: heartbeat.clone(),
        regions: REGIONS
            .iter()
            .map(|r| format!("\"{r}\""))
            .collect::<Vec<_>>()
            .join(", "),
        ca_cert: pki::ca_files(&ca_dir).cert,
        cert: coord_files.cert.clone(),
        key: coord_files.key.clone(),
        primary_host: mesh.clusters[0].host(),
        notify: sinks.config(),
        https: opts.tls,
    };
    let coordinators = match (&state.ha, &etcd_bin) {
        (Some(ha_state), Some(etcd)) => start_ha_coordinators(
            &mut mesh,
            &base,
            &opts,
            &dir,
            etcd,
            ha_state,
            &state.pg_hosts,
        )?,
        _ => start_sole_coordinator(&mut mesh, &base, &opts, &dir)?,
    };
    let token = &coordinators.token;

    // 4. One agent per region, each with the same [database] table; the primary
    // region's also backs up the uploads.
    let documents = documents_section(&dir, &key)?;
    for (i, region) in REGIONS.iter().enumerate() {
        let id = AgentId::new(format!("pg-{region}"))?;
        let region_id = RegionId::new(*region)?;
        let files = pki::agent_files(&dir.join("agents"), &id);
        if !files.cert.exists() {
            pki::issue_agent(&ca_dir, &id, &region_id, Validity::days(365), &files)?;
        }
        let config = dir.join(format!("agents/{id}.toml"));
        // The region's own address: its PostgreSQL's (which the agent advertises, and
        // the DNS name points at when it is primary) and its mesh probes'.
        let host = state.pg_hosts[i];
        let coordinator = match coordinators.quic.as_slice() {
            [one] => format!("coordinator = \"{one}\""),
            all => ha::agent_coordinators(all, i),
        };
        fs::write(
            &config,
            format!(
                "id = \"{id}\"\nregion = \"{region}\"\n{coordinator}\ncoordinator_name = \"localhost\"\nheartbeat_interval = \"{heartbeat}\"\ndata_dir = {}\nmesh_listen = \"{host}:0\"\n\n[tls]\nca_cert = {}\ncert = {}\nkey = {}\n\n[postgres]\nconninfo = \"host={host} port={} user=postgres dbname=postgres\"\n",
                toml_str(&pg_dir),
                toml_str(&pki::ca_files(&ca_dir).cert),
                toml_str(&files.cert),
                toml_str(&files.key),
                mesh.clusters[i].port,
            ) + if i == 0 { &documents } else { "" }
                + &database_section(&dir, region, &mesh.clusters[i], &key, &state.env_ports)?,
        )?;
        let log = dir.join(format!("logs/agent-{region}.log"));
        mesh.start(
            &format!("agent {id}"),
            &agent_bin,
            &["--config", &config.display().to_string()],
            &log,
            RESTART_DELAY,
        )?;
    }

    // 5. The operator's environment.
    let url = coordinators.urls.join(",");
    let dns = coordinators.dns[0];
    let env_path = dir.join("drmesh.env");
    let ca_cert = pki::ca_files(&ca_dir).cert;
    let trust = if opts.tls {
        format!(
            "# The REST API is on HTTPS, its certificate from this CA.\nexport DRMESH_CA_CERT={}\n",
            ca_cert.display()
        )
    } else {
        String::new()
    };
    write_private(
        &env_path,
        &format!(
            "export DRMESH_URL={url}\nexport DRMESH_TOKEN={}\n{trust}# The two repositories, both encrypted with one key; drmesh repo uses DRMESH_REPO\n# unless --repo names another.\nexport DRMESH_DOCUMENTS_REPO={}\nexport DRMESH_DATABASE_REPO={}\nexport DRMESH_REPO=\"$DRMESH_DOCUMENTS_REPO\"\nexport DRMESH_REPO_KEY_FILE={}\nexport DRMESH_DNS_SERVER={}\nexport DRMESH_DNS_PORT={}\nexport DRMESH_DB_NAME={DB_NAME}\n",
            token.token,
            dir.join("backups/documents/repo").display(),
            database_repo(&dir).display(),
            key.display(),
            dns.ip(),
            dns.port(),
        ),
    )?;
    let client = Client::new(
        &url,
        Some(token.token.clone()),
        opts.tls.then_some(ca_cert.as_path()),
    )?;
    let status = wait_mesh_up(&client, &mut mesh)?;
    crate::print_status(&status);
    first_backup(&client, &mut mesh);
    let plan = ensure_plan(&client);
    let answer = signals
        .runtime
        .block_on(drmesh_coordinator::admin::query_dns(
            dns,
            DB_NAME,
            Duration::from_secs(2),
        ))
        .map(|ips| {
            ips.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|e| format!("no answer: {e}"));
    println!();
    println!(
        "drmesh quickstart is running ({} regions).",
        status.regions.len()
    );
    // curl takes one URL: with several, the first (any coordinator answers).
    let api = if coordinators.urls.len() > 1 {
        "${DRMESH_URL%%,*}"
    } else {
        "$DRMESH_URL"
    };
    println!("  source {}", env_path.display());
    println!("  drmesh status");
    let curl = if opts.tls {
        "curl --cacert \"$DRMESH_CA_CERT\""
    } else {
        "curl"
    };
    println!("  {curl} -H \"Authorization: Bearer $DRMESH_TOKEN\" {api}/v1/backup-recovery/monitoring/dashboard");
    println!("  {curl} -X POST -H \"Authorization: Bearer $DRMESH_TOKEN\" {api}/v1/backup-recovery/documents/backup");
    println!("  drmesh backups list              # database backups");
    println!("  drmesh repo snapshots            # the document repository, offline");
    if let (true, Some(ha_state)) = (opts.ha, &state.ha) {
        for line in ha::summary(
            &coordinators.urls,
            &token.token,
            ha_state,
            &coordinators.dns,
            &dir,
            opts.tls.then_some(ca_cert.as_path()),
        ) {
            println!("{line}");
        }
    }
    println!(
        "Documents: {} is backed up to {} (plain archives in {}).",
        dir.join("uploads").display(),
        dir.join("backups/documents/repo").display(),
        dir.join("backups/documents/snapshots").display()
    );
    println!(
        "Database: every region archives WAL and takes backups into {} when it holds the primary; both repositories are encrypted with {}. Offline:",
        database_repo(&dir).display(),
        key.display()
    );
    println!("  drmesh repo restore --repo \"$DRMESH_DATABASE_REPO\" --time \"$(date -u +%FT%TZ)\" --target /tmp/pitr --port 5499");
    let server = if coordinators.dns.len() > 1 {
        "every coordinator's embedded DNS server, the first"
    } else {
        "the coordinator's embedded DNS server"
    };
    println!(
        "Database name: {DB_NAME} answers {answer} (the primary's PostgreSQL; a failover points it at the new primary), from {server} at {dns}:"
    );
    println!("  dig @{} -p {} {DB_NAME}", dns.ip(), dns.port());
    let ports: Vec<String> = mesh
        .clusters
        .iter()
        .zip(&state.pg_hosts)
        .map(|(c, host)| format!("{} {host}:{}", c.name, c.port))
        .collect();
    println!("  PostgreSQL: {}", ports.join(", "));
    match &plan {
        Some(p) => println!(
            "DR plan {} (\"{}\"): RPO {}, RTO {}, fails over to {}, automatic failover {}, notifies {} (local sinks appending to {}):",
            p.id,
            p.name,
            p.rpo,
            p.rto,
            p.failover_regions
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(" then "),
            if p.automatic_failover { "on" } else { "off" },
            p.notification_channels.join(", "),
            dir.join("notifications").display(),
        ),
        None => println!("DR plan {PLAN_ID} is missing (see above):"),
    }
    println!("  {curl} -H \"Authorization: Bearer $DRMESH_TOKEN\" {api}/v1/backup-recovery/disaster-recovery/plans/{PLAN_ID}");
    println!(
        "Logs are in {}. Press Ctrl-C to stop everything.",
        dir.join("logs").display()
    );

    let outcome = wait_for_signal(&mut signals, &mut mesh);
    println!("stopping the mesh…");
    mesh.stop();
    println!("stopped.");
    outcome
}

/// What every coordinator's configuration shares: whichever leads acts with its own.
struct CoordinatorBase {
    program: PathBuf,
    heartbeat: String,
    /// `"us-west-2", "us-east-1", …`
    regions: String,
    ca_cert: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// The DNS name's answer before the first failover.
    primary_host: IpAddr,
    /// The `[notify.*]` tables.
    notify: String,
    /// The REST API on HTTPS (`--tls`).
    https: bool,
}

impl CoordinatorBase {
    /// The REST API's URL at `addr`.
    fn url(&self, addr: SocketAddr) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }
}

/// Where a coordinator keeps its state.
enum StoreLines {
    /// `store_path`: one coordinator.
    Redb(PathBuf),
    /// The `[store]` table naming the etcd cluster.
    Etcd(String),
}

/// One coordinator as the quickstart runs it.
struct CoordinatorSpec {
    /// Its part's name.
    name: String,
    /// Holds its `coordinator.toml` and `ready.json`.
    dir: PathBuf,
    log: PathBuf,
    http: SocketAddr,
    /// Port 0 on the first start; then where it listened.
    quic: SocketAddr,
    /// Its embedded DNS server; port 0 as `quic`.
    dns: SocketAddr,
    store: StoreLines,
    restart_delay: Duration,
}

impl CoordinatorSpec {
    fn config(&self) -> PathBuf {
        self.dir.join("coordinator.toml")
    }

    /// Its `coordinator.toml`. Beside others on etcd it says where it is reached
    /// (`http_advertise`, `quic_advertise`: shown in the status, and the address a
    /// follower sends agents to when it leads).
    fn toml(&self, base: &CoordinatorBase) -> String {
        let etcd = matches!(self.store, StoreLines::Etcd(_));
        let mut top = format!("http_listen = \"{}\"\n", self.http);
        if base.https {
            top += "http_tls = true\n";
        }
        if etcd {
            top += &format!("http_advertise = \"{}\"\n", base.url(self.http));
        }
        top += &format!("quic_listen = \"{}\"\n", self.quic);
        if etcd && self.quic.port() != 0 {
            top += &format!("quic_advertise = \"{}\"\n", self.quic);
        }
        let table = match &self.store {
            StoreLines::Redb(path) => {
                top += &format!("store_path = {}\n", toml_str(path));
                String::new()
            }
            StoreLines::Etcd(table) => table.clone(),
        };
        format!(
            "{top}heartbeat_interval = \"{}\"\nregions = [{}]\n{table}\n[tls]\nca_cert = {}\ncert = {}\nkey = {}\n\n[dns]\nprovider = \"embedded\"\nrecord = \"{DB_NAME}\"\nlisten = \"{}\"\ninitial = \"{}\"\n{}",
            base.heartbeat,
            base.regions,
            toml_str(&base.ca_cert),
            toml_str(&base.cert),
            toml_str(&base.key),
            self.dns,
            base.primary_host,
            base.notify,
        )
    }

    fn write(&self, base: &CoordinatorBase) -> anyhow::Result<()> {
        let path = self.config();
        fs::write(&path, self.toml(base)).with_context(|| format!("write {}", path.display()))
    }
}

/// The coordinators running, as the agents and the operator reach them.
struct Coordinators {
    token: drmesh_protocol::api::CreatedToken,
    /// Their REST APIs, the first on `--http-port`.
    urls: Vec<String>,
    quic: Vec<SocketAddr>,
    /// Their embedded DNS servers.
    dns: Vec<SocketAddr>,
}

/// Starts the coordinator `spec` and waits until it listens; then pins its QUIC and DNS
/// ports in its configuration, so a restarted coordinator listens where the agents and
/// `drmesh.env` expect it.
fn start_coordinator(
    mesh: &mut Mesh,
    base: &CoordinatorBase,
    spec: &mut CoordinatorSpec,
) -> anyhow::Result<()> {
    fs::create_dir_all(&spec.dir).with_context(|| format!("create {}", spec.dir.display()))?;
    spec.write(base)?;
    let ready = spec.dir.join("ready.json");
    let _ = fs::remove_file(&ready);
    mesh.start(
        &spec.name,
        &base.program,
        &[
            "--config",
            &spec.config().display().to_string(),
            "--ready-file",
            &ready.display().to_string(),
        ],
        &spec.log,
        spec.restart_delay,
    )?;
    let ready = wait_ready(&ready, mesh, &spec.log)?;
    spec.quic = ready.quic;
    spec.dns = ready
        .dns
        .context("the coordinator's ready file names no DNS server although [dns] is set")?;
    spec.write(base)
}

/// The one coordinator on `DIR/coordinator/state.redb`, its admin token written there
/// first (redb is locked while the coordinator runs).
fn start_sole_coordinator(
    mesh: &mut Mesh,
    base: &CoordinatorBase,
    opts: &Opts,
    dir: &Path,
) -> anyhow::Result<Coordinators> {
    let coord_dir = dir.join("coordinator");
    let store_path = coord_dir.join("state.redb");
    let token = drmesh_coordinator::admin::create_token(
        &store_path,
        Role::Admin,
        Some("quickstart".into()),
    )?;
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut spec = CoordinatorSpec {
        name: "coordinator".into(),
        dir: coord_dir,
        log: dir.join("logs/coordinator.log"),
        http: SocketAddr::new(localhost, opts.http_port),
        quic: SocketAddr::new(localhost, 0),
        dns: SocketAddr::new(localhost, opts.dns_port),
        store: StoreLines::Redb(store_path),
        restart_delay: RESTART_DELAY,
    };
    start_coordinator(mesh, base, &mut spec)?;
    Ok(Coordinators {
        token,
        urls: vec![base.url(spec.http)],
        quic: vec![spec.quic],
        dns: vec![spec.dns],
    })
}

/// `--ha`: the three etcd members, the admin token written into etcd, then one
/// coordinator per region (`DIR/coordinator/<region>/`), each with its QUIC and DNS
/// servers on its region's address.
fn start_ha_coordinators(
    mesh: &mut Mesh,
    base: &CoordinatorBase,
    opts: &Opts,
    dir: &Path,
    etcd: &Path,
    state: &ha::HaState,
    hosts: &[IpAddr],
) -> anyhow::Result<Coordinators> {
    let ttl = *opts.leader_ttl;
    ha::start_etcd(mesh, dir, etcd, state)?;
    let token = ha::create_token(mesh, dir, state, ttl)?;
    let mut out = Coordinators {
        token,
        urls: Vec::new(),
        quic: Vec::new(),
        dns: Vec::new(),
    };
    for (i, region) in REGIONS.iter().enumerate() {
        let host = hosts[i];
        let mut spec = CoordinatorSpec {
            name: format!("coordinator {region}"),
            dir: dir.join("coordinator").join(region),
            log: dir.join(format!("logs/coordinator-{region}.log")),
            http: ha::http_addr(state, opts.http_port, i),
            quic: SocketAddr::new(host, 0),
            dns: SocketAddr::new(host, if i == 0 { opts.dns_port } else { 0 }),
            store: StoreLines::Etcd(ha::store_table(state, region, ttl)),
            // Back only once the others have elected a successor (a lease and a
            // round): a killed leader is replaced, as a lost region's would be.
            restart_delay: ttl + RESTART_DELAY,
        };
        start_coordinator(mesh, base, &mut spec)?;
        println!(
            "coordinator {region}: REST API {}, QUIC {}, DNS {}",
            base.url(spec.http),
            spec.quic,
            spec.dns
        );
        out.urls.push(base.url(spec.http));
        out.quic.push(spec.quic);
        out.dns.push(spec.dns);
    }
    Ok(out)
}

/// While the mesh comes up, a part that exits is a mistake to report, not to restart.
fn check_children(mesh: &mut Mesh) -> anyhow::Result<()> {
    for part in mesh.parts.iter_mut() {
        if let Some(child) = part.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} exited unexpectedly ({status}); see {}:\n{}",
                    part.name,
                    part.log.display(),
                    tail(&part.log)
                );
            }
        }
    }
    Ok(())
}

/// The coordinator's ready file, as far as the quickstart reads it.
#[derive(Deserialize)]
struct Ready {
    quic: SocketAddr,
    /// The embedded DNS server's address.
    #[serde(default)]
    dns: Option<SocketAddr>,
}

fn wait_ready(ready: &Path, mesh: &mut Mesh, log: &Path) -> anyhow::Result<Ready> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(bytes) = fs::read(ready) {
            return serde_json::from_slice(&bytes).context("read the coordinator's ready file");
        }
        if let Err(e) = check_children(mesh) {
            bail!("{e}\n{}", tail(log));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "the coordinator did not become ready in 30 s:\n{}",
        tail(log)
    )
}

fn wait_mesh_up(client: &Client, mesh: &mut Mesh) -> anyhow::Result<DrStatus> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        check_children(mesh)?;
        if let Ok(status) = client.get::<DrStatus>("/v1/backup-recovery/disaster-recovery/status") {
            let agents: Vec<_> = status.regions.iter().flat_map(|r| &r.agents).collect();
            let all_up = agents.len() == REGIONS.len()
                && agents
                    .iter()
                    .all(|a| a.state == AgentState::Up && a.role.is_some());
            // With several coordinators, one leads (the status came through it).
            let led = status
                .coordinators
                .as_ref()
                .is_none_or(|c| c.standing == Standing::Sole || c.leader.is_some());
            if all_up && led && status.primary_region.is_some() {
                return Ok(status);
            }
            last = Some(status);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("the mesh did not come up in 60 s; last status: {last:?}")
}

/// Signal streams, installed before anything is started so an early Ctrl-C still stops
/// what was started.
struct Signals {
    runtime: tokio::runtime::Runtime,
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let _guard = runtime.enter();
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("install SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("install SIGTERM handler")?,
            runtime,
        })
    }
}

fn wait_for_signal(signals: &mut Signals, mesh: &mut Mesh) -> anyhow::Result<()> {
    let Signals { runtime, int, term } = signals;
    runtime.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = int.recv() => return Ok(()),
                _ = term.recv() => return Ok(()),
                _ = tick.tick() => mesh.supervise(),
            }
        }
    })
}
