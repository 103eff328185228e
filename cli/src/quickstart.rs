//! `drmesh quickstart`: a whole mesh on this machine, in the foreground.
//!
//! It makes (or reuses, when run again on the same directory) a CA and certificates, one
//! PostgreSQL primary in `us-west-2` and streaming standbys in `us-east-1` and
//! `eu-west-1`, a coordinator, and one agent per region; writes `DIR/drmesh.env`; and on
//! Ctrl-C (or SIGTERM) stops everything it started.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use drmesh_agent::postgres::local::{self, LocalCluster, PgBin};
use drmesh_protocol::api::{AgentState, DrStatus, Role};
use drmesh_protocol::pki::{self, Validity};
use drmesh_protocol::{AgentId, RegionId};
use serde::{Deserialize, Serialize};

use crate::client::Client;

/// The regions of the quickstart mesh; the first holds the primary.
const REGIONS: [&str; 3] = ["us-west-2", "us-east-1", "eu-west-1"];

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
}

/// Remembered between runs so a second quickstart on the same directory reuses clusters.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    pg_ports: Vec<u16>,
}

/// Everything started, stopped in reverse on the way out (also on error).
struct Mesh {
    children: Vec<(String, Child)>,
    clusters: Vec<LocalCluster>,
}

impl Mesh {
    fn stop(&mut self) {
        for (name, child) in self.children.iter_mut().rev() {
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
        self.children.clear();
        for cluster in self.clusters.iter().rev() {
            if let Err(e) = cluster.stop() {
                eprintln!("stop PostgreSQL {}: {e}", cluster.name);
                let _ = cluster.stop_immediate();
            }
        }
        self.clusters.clear();
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

fn spawn(name: &str, program: &Path, args: &[&str], log: &Path) -> anyhow::Result<Child> {
    let out = fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
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

/// The `[documents]` table of the primary region's agent: `DIR/uploads` (with a sample
/// document the first time) into an encrypted repository under `DIR/backups/documents`.
fn documents_section(dir: &Path) -> anyhow::Result<String> {
    let uploads = dir.join("uploads");
    if !uploads.exists() {
        let sample = uploads.join("documents/doc-0001");
        fs::create_dir_all(&sample).with_context(|| format!("create {}", sample.display()))?;
        fs::write(
            sample.join("welcome.txt"),
            "A sample upload: drmesh backs up everything under this directory.\n",
        )?;
    }
    let key = dir.join("documents.key");
    if !key.exists() {
        let mut bytes = [0u8; 32];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
            .context("read /dev/urandom")?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&key, &hex)?;
    }
    Ok(format!(
        "\n[documents]\nsource = {}\nkey_file = {}\narchive_dir = {}\nrestore_dir = {}\n\n[[documents.locations]]\nname = \"local\"\nurl = {}\n",
        toml_str(&uploads),
        toml_str(&key),
        toml_str(&dir.join("backups/documents/snapshots")),
        toml_str(&dir.join("restores")),
        toml_str(&dir.join("backups/documents/repo")),
    ))
}

/// The primary agent's configuration file (PostgreSQL's `archive_command` names it).
fn primary_agent_config(dir: &Path) -> PathBuf {
    dir.join(format!("agents/pg-{}.toml", REGIONS[0]))
}

/// The `[database]` table of the primary region's agent: its cluster, into a repository
/// under `DIR/backups/database` that the postgres user owns (it archives WAL there).
fn database_section(dir: &Path, primary: &LocalCluster) -> anyhow::Result<String> {
    let repo = dir.join("backups/database");
    local::prepare_parent_dir(&repo)?;
    Ok(format!(
        "\n[database]\ndata_dir = {}\nrepository = {}\n",
        toml_str(&primary.data_dir),
        toml_str(&repo),
    ))
}

/// Makes the primary archive its WAL through `drmesh-agent wal-push` (restarting it the
/// first time, since `archive_mode` needs a restart).
fn archive_wal(primary: &LocalCluster, agent_bin: &Path, dir: &Path) -> anyhow::Result<()> {
    let command = format!(
        "{} --config {} wal-push %p",
        agent_bin.display(),
        primary_agent_config(dir).display()
    );
    primary.psql(&format!(
        "alter system set archive_command = '{}'",
        command.replace('\'', "''")
    ))?;
    if primary.psql("show archive_mode")? == "off" {
        primary.psql("alter system set archive_mode = 'on'")?;
        primary.stop()?;
        primary.start()?;
    } else {
        primary.psql("select pg_reload_conf()")?;
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
    let state: State = match fs::read(&state_path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("read {}", state_path.display()))?,
        Err(_) => State {
            pg_ports: (0..REGIONS.len())
                .map(|_| local::free_port())
                .collect::<Result<_, _>>()?,
        },
    };
    fs::write(&state_path, serde_json::to_vec_pretty(&state)?)?;
    let pg_dir = dir.join("pg");
    local::prepare_parent_dir(&pg_dir)?;
    let mut mesh = Mesh {
        children: Vec::new(),
        clusters: Vec::new(),
    };
    for (i, region) in REGIONS.iter().enumerate() {
        let data = pg_dir.join(region);
        let port = state.pg_ports[i];
        let cluster = if data.join("PG_VERSION").exists() {
            LocalCluster::open(&bin, region, &data, port)?
        } else if i == 0 {
            println!("initdb {region} (primary) on port {port}");
            LocalCluster::init_primary(&bin, region, &data, port)?
        } else {
            println!("pg_basebackup {region} (standby) on port {port}");
            LocalCluster::init_standby(&bin, region, &mesh.clusters[0], &data, port)?
        };
        if !cluster.is_running() {
            cluster.start()?;
        }
        if i == 0 {
            archive_wal(&cluster, &agent_bin, &dir)?;
        }
        mesh.clusters.push(cluster);
    }

    // 3. Coordinator, with a fresh admin token written into its store first.
    let coord_dir = dir.join("coordinator");
    let store_path = coord_dir.join("state.redb");
    let token = {
        let store = drmesh_coordinator::store::RedbStore::open(&store_path)?;
        drmesh_coordinator::auth::create_token(&store, Role::Admin, Some("quickstart".into()))?
    };
    let coord_config = coord_dir.join("coordinator.toml");
    fs::write(
        &coord_config,
        format!(
            "http_listen = \"127.0.0.1:{}\"\nquic_listen = \"127.0.0.1:0\"\nstore_path = {}\nheartbeat_interval = \"{heartbeat}\"\n\n[tls]\nca_cert = {}\ncert = {}\nkey = {}\n",
            opts.http_port,
            toml_str(&store_path),
            toml_str(&pki::ca_files(&ca_dir).cert),
            toml_str(&coord_files.cert),
            toml_str(&coord_files.key),
        ),
    )?;
    let ready = coord_dir.join("ready.json");
    let _ = fs::remove_file(&ready);
    let coord_log = dir.join("logs/coordinator.log");
    let child = spawn(
        "coordinator",
        &coordinator_bin,
        &[
            "--config",
            &coord_config.display().to_string(),
            "--ready-file",
            &ready.display().to_string(),
        ],
        &coord_log,
    )?;
    mesh.children.push(("coordinator".into(), child));
    let quic = wait_ready(&ready, &mut mesh, &coord_log)?;

    // 4. One agent per region; the primary region's also backs up the uploads.
    let primary_extra = documents_section(&dir)? + &database_section(&dir, &mesh.clusters[0])?;
    for (i, region) in REGIONS.iter().enumerate() {
        let id = AgentId::new(format!("pg-{region}"))?;
        let region_id = RegionId::new(*region)?;
        let files = pki::agent_files(&dir.join("agents"), &id);
        if !files.cert.exists() {
            pki::issue_agent(&ca_dir, &id, &region_id, Validity::days(365), &files)?;
        }
        let config = dir.join(format!("agents/{id}.toml"));
        fs::write(
            &config,
            format!(
                "id = \"{id}\"\nregion = \"{region}\"\ncoordinator = \"{quic}\"\ncoordinator_name = \"localhost\"\nheartbeat_interval = \"{heartbeat}\"\ndata_dir = {}\n\n[tls]\nca_cert = {}\ncert = {}\nkey = {}\n\n[postgres]\nconninfo = \"{}\"\n",
                toml_str(&pg_dir),
                toml_str(&pki::ca_files(&ca_dir).cert),
                toml_str(&files.cert),
                toml_str(&files.key),
                mesh.clusters[i].conninfo(),
            ) + if i == 0 { &primary_extra } else { "" },
        )?;
        let log = dir.join(format!("logs/agent-{region}.log"));
        let child = spawn(
            &format!("agent {id}"),
            &agent_bin,
            &["--config", &config.display().to_string()],
            &log,
        )?;
        mesh.children.push((format!("agent {id}"), child));
    }

    // 5. The operator's environment.
    let url = format!("http://127.0.0.1:{}", opts.http_port);
    let env_path = dir.join("drmesh.env");
    write_private(
        &env_path,
        &format!(
            "export DRMESH_URL={url}\nexport DRMESH_TOKEN={}\nexport DRMESH_REPO={}\nexport DRMESH_REPO_KEY_FILE={}\n",
            token.token,
            dir.join("backups/documents/repo").display(),
            dir.join("documents.key").display(),
        ),
    )?;
    let client = Client::new(&url, Some(token.token.clone()));
    let status = wait_mesh_up(&client, &mut mesh)?;
    crate::print_status(&status);
    first_backup(&client, &mut mesh);
    println!();
    println!(
        "drmesh quickstart is running ({} regions).",
        status.regions.len()
    );
    println!("  source {}", env_path.display());
    println!("  drmesh status");
    println!("  curl -H \"Authorization: Bearer $DRMESH_TOKEN\" $DRMESH_URL/v1/backup-recovery/monitoring/dashboard");
    println!("  curl -X POST -H \"Authorization: Bearer $DRMESH_TOKEN\" $DRMESH_URL/v1/backup-recovery/documents/backup");
    println!("  drmesh backups list              # database backups");
    println!("  drmesh repo snapshots            # the document repository, offline");
    println!(
        "Documents: {} is backed up to {} (plain archives in {}).",
        dir.join("uploads").display(),
        dir.join("backups/documents/repo").display(),
        dir.join("backups/documents/snapshots").display()
    );
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

fn check_children(mesh: &mut Mesh) -> anyhow::Result<()> {
    for (name, child) in mesh.children.iter_mut() {
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited unexpectedly ({status}); see the logs directory");
        }
    }
    Ok(())
}

fn wait_ready(ready: &Path, mesh: &mut Mesh, log: &Path) -> anyhow::Result<String> {
    #[derive(Deserialize)]
    struct Ready {
        quic: std::net::SocketAddr,
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(bytes) = fs::read(ready) {
            let r: Ready =
                serde_json::from_slice(&bytes).context("read the coordinator's ready file")?;
            return Ok(r.quic.to_string());
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
            if all_up && status.primary_region.is_some() {
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
                _ = tick.tick() => check_children(mesh)?,
            }
        }
    })
}
