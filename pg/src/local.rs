//! Real local PostgreSQL clusters made with the machine's own binaries (the `process`
//! feature), for the quickstart and the end-to-end tests: a primary (`initdb`) and streaming standbys
//! (`pg_basebackup -R`), started and stopped with `pg_ctl`.
//!
//! By default a cluster listens on 127.0.0.1 only. [`PgNetwork`] places it elsewhere: other
//! listen addresses, the address clients use, networks its `pg_hba.conf` trusts, and a
//! command prefix (e.g. `ip netns exec NS`) under which `pg_ctl start` and
//! `pg_basebackup` run, so that a server lives in a network namespace.
//!
//! PostgreSQL refuses to run as root. When this process is root, every PostgreSQL
//! program runs as the `postgres` OS user, and data directories belong to it with mode
//! 0700. Otherwise they run as the current user.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Uid, User};

#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: install them with `apt-get install -y postgresql`")]
    NoBinaries,
    #[error("the `postgres` OS user is missing (PostgreSQL will not run as root): install the postgresql package, which creates it")]
    NoPostgresUser,
    #[error("{dir} cannot be reached by the postgres user ({ancestor} is not traversable by others): use a directory under /tmp or chmod o+x {ancestor}")]
    Unreachable { dir: PathBuf, ancestor: PathBuf },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{what} did not happen within {timeout:?}: {detail}")]
    Timeout {
        what: String,
        timeout: Duration,
        detail: String,
    },
    #[error("no free port: {0}")]
    NoPort(std::io::Error),
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> LocalPgError + 'a {
    move |source| LocalPgError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The directory of one PostgreSQL installation's programs.
#[derive(Clone, Debug)]
pub struct PgBin {
    dir: PathBuf,
}

impl PgBin {
    /// `$DRMESH_PG_BIN` if set, else the highest version under
    /// `/usr/lib/postgresql/*/bin` that has `initdb`.
    pub fn find() -> Result<PgBin, LocalPgError> {
        if let Some(dir) = std::env::var_os("DRMESH_PG_BIN") {
            let dir = PathBuf::from(dir);
            if dir.join("initdb").exists() {
                return Ok(PgBin { dir });
            }
            return Err(LocalPgError::NoBinaries);
        }
        let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .map_err(|_| LocalPgError::NoBinaries)?
            .flatten()
            .filter_map(|e| {
                let v: u32 = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((v, bin))
            })
            .collect();
        versions.sort();
        versions
            .pop()
            .map(|(_, dir)| PgBin { dir })
            .ok_or(LocalPgError::NoBinaries)
    }

    /// The programs in `dir` (which must hold `pg_ctl`).
    pub fn at(dir: &Path) -> Result<PgBin, LocalPgError> {
        if dir.join("pg_ctl").exists() {
            Ok(PgBin {
                dir: dir.to_path_buf(),
            })
        } else {
            Err(LocalPgError::NoBinaries)
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Major version from `pg_ctl --version` ("pg_ctl (PostgreSQL) 15.18").
    pub fn major_version(&self) -> Result<u32, LocalPgError> {
        let out = run(Command::new(self.program("pg_ctl")).arg("--version"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .last()
            .and_then(|v| v.split('.').next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| LocalPgError::Command {
                command: "pg_ctl --version".into(),
                status: "ok".into(),
                stderr: format!("unexpected output {text:?}"),
            })
    }
}

/// The user PostgreSQL programs run as: `postgres` when we are root, else ourselves.
fn run_as() -> Result<Option<(Uid, Gid)>, LocalPgError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let user = User::from_name("postgres")
        .ok()
        .flatten()
        .ok_or(LocalPgError::NoPostgresUser)?;
    Ok(Some((user.uid, user.gid)))
}

fn pg_command(program: PathBuf) -> Result<Command, LocalPgError> {
    pg_command_in(&[], program)
}

/// Like [`pg_command`], run under `prefix` (e.g. `ip netns exec NS`). The prefix runs as
/// the current user (entering a namespace needs root); when that is root, `setpriv` drops
/// to the postgres user after it.
fn pg_command_in(prefix: &[String], program: PathBuf) -> Result<Command, LocalPgError> {
    let Some((first, rest)) = prefix.split_first() else {
        let mut cmd = Command::new(program);
        cmd.stdin(Stdio::null()).env_remove("PGDATA");
        if let Some((uid, gid)) = run_as()? {
            cmd.uid(uid.as_raw()).gid(gid.as_raw()).current_dir("/");
        }
        return Ok(cmd);
    };
    let mut cmd = Command::new(first);
    cmd.args(rest).stdin(Stdio::null()).env_remove("PGDATA");
    if let Some((uid, gid)) = run_as()? {
        cmd.args([
            "setpriv".to_string(),
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".to_string(),
            "--".to_string(),
        ])
        .current_dir("/");
    }
    cmd.arg(program);
    Ok(cmd)
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().to_string();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn tail_text(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a command to completion; a non-zero exit is an error with its stderr's tail.
fn run(cmd: &mut Command) -> Result<Output, LocalPgError> {
    let out = cmd.output().map_err(|e| LocalPgError::Command {
        command: describe(cmd),
        status: "not started".into(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(LocalPgError::Command {
            command: describe(cmd),
            status: out.status.to_string(),
            stderr: tail_text(&String::from_utf8_lossy(&out.stderr), 20),
        });
    }
    Ok(out)
}

/// Makes `path` belong to the user PostgreSQL runs as.
fn chown_to_pg(path: &Path) -> Result<(), LocalPgError> {
    if let Some((uid, gid)) = run_as()? {
        nix::unistd::chown(path, Some(uid), Some(gid)).map_err(|e| LocalPgError::Io {
            action: "chown",
            path: path.to_path_buf(),
            source: e.into(),
        })?;
    }
    Ok(())
}

/// Gives `path` (and, for a directory, everything below it) to the postgres user when
/// this process runs as root and starts PostgreSQL as that user; does nothing otherwise.
/// What PostgreSQL's own commands (`archive_command`, `restore_command`) read or write
/// must be theirs.
pub fn hand_to_postgres(path: &Path) -> Result<(), LocalPgError> {
    if run_as()?.is_none() {
        return Ok(());
    }
    chown_to_pg(path)?;
    if path.is_dir() {
        for entry in fs::read_dir(path).map_err(io_err("read", path))? {
            let entry = entry.map_err(io_err("read", path))?;
            let file_type = entry
                .file_type()
                .map_err(io_err("inspect", &entry.path()))?;
            if file_type.is_dir() {
                hand_to_postgres(&entry.path())?;
            } else if !file_type.is_symlink() {
                chown_to_pg(&entry.path())?;
            }
        }
    }
    Ok(())
}

/// Creates `dir` (and parents) and makes sure the postgres user can reach and write it.
pub fn prepare_parent_dir(dir: &Path) -> Result<(), LocalPgError> {
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let dir = dir.canonicalize().map_err(io_err("resolve", dir))?;
    if run_as()?.is_some() {
        for ancestor in dir.ancestors().skip(1) {
            let mode = fs::metadata(ancestor)
                .map_err(io_err("inspect", ancestor))?
                .permissions()
                .mode();
            if mode & 0o001 == 0 {
                return Err(LocalPgError::Unreachable {
                    dir: dir.clone(),
                    ancestor: ancestor.to_path_buf(),
                });
            }
        }
        chown_to_pg(&dir)?;
    }
    Ok(())
}

/// A free TCP port on 127.0.0.1 (bound to port 0 and read back).
pub fn free_port() -> Result<u16, LocalPgError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(LocalPgError::NoPort)?;
    Ok(listener.local_addr().map_err(LocalPgError::NoPort)?.port())
}

/// Where a cluster listens and runs. The default is the loopback-only cluster of
/// [`LocalCluster::init_primary`].
#[derive(Clone, Debug, Default)]
pub struct PgNetwork {
    /// `listen_addresses`; empty means 127.0.0.1.
    pub listen_addresses: Vec<IpAddr>,
    /// The address clients (`psql`, [`LocalCluster::conninfo`], standbys' base backups)
    /// connect to; `None` means the first listen address.
    pub host: Option<IpAddr>,
    /// Networks (CIDR, e.g. "198.18.0.0/15") that `pg_hba.conf` trusts for connections and
    /// replication, besides loopback. Standbys copy the primary's `pg_hba.conf`.
    pub trust: Vec<String>,
    /// Program and arguments that `pg_ctl start` and `pg_basebackup` run under, e.g.
    /// `["ip", "netns", "exec", "dm3-a"]`; empty runs them directly.
    pub command_prefix: Vec<String>,
}

impl PgNetwork {
    fn listen(&self) -> Vec<IpAddr> {
        if self.listen_addresses.is_empty() {
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
        } else {
            self.listen_addresses.clone()
        }
    }

    fn client_host(&self) -> IpAddr {
        self.host.unwrap_or_else(|| self.listen()[0])
    }
}

/// One local cluster.
#[derive(Clone, Debug)]
pub struct LocalCluster {
    pub name: String,
    pub data_dir: PathBuf,
    pub port: u16,
    socket_dir: PathBuf,
    bin: PgBin,
    network: PgNetwork,
}

/// Unix socket paths are limited to about 100 bytes; keep the directory short.
fn socket_dir_for(data_dir: &Path, port: u16) -> PathBuf {
    let near = data_dir
        .parent()
        .unwrap_or(Path::new("/tmp"))
        .join(format!("sock-{port}"));
    if near.as_os_str().len() + 20 < 100 {
        near
    } else {
        PathBuf::from(format!("/tmp/drmesh-pg-sock-{port}"))
    }
}

impl LocalCluster {
    fn new(bin: &PgBin, name: &str, data_dir: &Path, port: u16) -> Self {
        Self::new_on(bin, name, data_dir, port, &PgNetwork::default())
    }

    fn new_on(bin: &PgBin, name: &str, data_dir: &Path, port: u16, network: &PgNetwork) -> Self {
        Self {
            name: name.to_string(),
            data_dir: data_dir.to_path_buf(),
            port,
            socket_dir: socket_dir_for(data_dir, port),
            bin: bin.clone(),
            network: network.clone(),
        }
    }

    /// The address clients connect to (127.0.0.1 unless placed by a [`PgNetwork`]).
    pub fn host(&self) -> IpAddr {
        self.network.client_host()
    }

    /// A cluster that already exists on disk (made by an earlier run).
    pub fn open(
        bin: &PgBin,
        name: &str,
        data_dir: &Path,
        port: u16,
    ) -> Result<LocalCluster, LocalPgError> {
        let cluster = Self::new(bin, name, data_dir, port);
        let version = data_dir.join("PG_VERSION");
        if !version.exists() {
            return Err(LocalPgError::Io {
                action: "open cluster",
                path: version,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no PG_VERSION"),
            });
        }
        cluster.make_socket_dir()?;
        Ok(cluster)
    }

    fn make_socket_dir(&self) -> Result<(), LocalPgError> {
        fs::create_dir_all(&self.socket_dir).map_err(io_err("create", &self.socket_dir))?;
        chown_to_pg(&self.socket_dir)
    }

    pub fn append_config(&self, file: &str, text: &str) -> Result<(), LocalPgError> {
        let path = self.data_dir.join(file);
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        f.write_all(text.as_bytes()).map_err(io_err("write", &path))
    }

    fn connection_settings(&self) -> String {
        let listen: Vec<String> = self
            .network
            .listen()
            .iter()
            .map(ToString::to_string)
            .collect();
        format!(
            "\n# drmesh local cluster {}\nlisten_addresses = '{}'\nport = {}\nunix_socket_directories = '{}'\n",
            self.name,
            listen.join(","),
            self.port,
            self.socket_dir.display()
        )
    }

    /// `initdb` (trust authentication on loopback only) plus replication settings. Does
    /// not start the cluster. `wal_log_hints = on`, which `pg_rewind` needs to turn a
    /// fenced old primary into a standby (`drmesh rejoin`); standbys copy it.
    pub fn init_primary(
        bin: &PgBin,
        name: &str,
        data_dir: &Path,
        port: u16,
    ) -> Result<LocalCluster, LocalPgError> {
        Self::init_primary_on(bin, name, data_dir, port, &PgNetwork::default())
    }

    /// [`LocalCluster::init_primary`] placed by `network`.
    pub fn init_primary_on(
        bin: &PgBin,
        name: &str,
        data_dir: &Path,
        port: u16,
        network: &PgNetwork,
    ) -> Result<LocalCluster, LocalPgError> {
        let cluster = Self::new_on(bin, name, data_dir, port, network);
        fs::create_dir_all(data_dir).map_err(io_err("create", data_dir))?;
        fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", data_dir))?;
        chown_to_pg(data_dir)?;
        cluster.make_socket_dir()?;
        run(pg_command(bin.program("initdb"))?
            .arg("-D")
            .arg(data_dir)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]))?;
        cluster.append_config(
            "postgresql.conf",
            &format!(
                "{}wal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\nhot_standby = on\nwal_keep_size = '256MB'\nlogging_collector = off\nwal_log_hints = on\n",
                cluster.connection_settings()
            ),
        )?;
        let mut hba = String::from("# drmesh local cluster: loopback only\nlocal all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal replication all trust\nhost replication all 127.0.0.1/32 trust\nhost replication all ::1/128 trust\n");
        for net in &network.trust {
            hba.push_str(&format!(
                "host all all {net} trust\nhost replication all {net} trust\n"
            ));
        }
        fs::write(data_dir.join("pg_hba.conf"), hba)
            .map_err(io_err("write", &data_dir.join("pg_hba.conf")))?;
        chown_to_pg(&data_dir.join("pg_hba.conf"))?;
        Ok(cluster)
    }

    /// `pg_basebackup -R` from a running primary, then this cluster's own port and
    /// socket directory. Does not start it.
    pub fn init_standby(
        bin: &PgBin,
        name: &str,
        primary: &LocalCluster,
        data_dir: &Path,
        port: u16,
    ) -> Result<LocalCluster, LocalPgError> {
        Self::init_standby_from(
            bin,
            name,
            primary.host(),
            primary.port,
            data_dir,
            port,
            &PgNetwork::default(),
        )
    }

    /// [`LocalCluster::init_standby`] of the primary at `primary_host:primary_port`
    /// (which its `primary_conninfo` keeps: the standby streams from there), placed by
    /// `network`; `pg_basebackup` runs under the network's command prefix.
    pub fn init_standby_from(
        bin: &PgBin,
        name: &str,
        primary_host: IpAddr,
        primary_port: u16,
        data_dir: &Path,
        port: u16,
        network: &PgNetwork,
    ) -> Result<LocalCluster, LocalPgError> {
        let cluster = Self::new_on(bin, name, data_dir, port, network);
        if let Some(parent) = data_dir.parent() {
            prepare_parent_dir(parent)?;
        }
        cluster.make_socket_dir()?;
        run(
            pg_command_in(&network.command_prefix, bin.program("pg_basebackup"))?
                .args([
                    "-h",
                    &primary_host.to_string(),
                    "-p",
                    &primary_port.to_string(),
                    "-U",
                    "postgres",
                    "-D",
                ])
                .arg(data_dir)
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]),
        )?;
        cluster.append_config("postgresql.auto.conf", &cluster.connection_settings())?;
        Ok(cluster)
    }

    pub fn log_path(&self) -> PathBuf {
        self.data_dir
            .parent()
            .unwrap_or(Path::new("/tmp"))
            .join(format!("{}.log", self.name))
    }

    fn pg_ctl(&self) -> Result<Command, LocalPgError> {
        let mut cmd = pg_command(self.bin.program("pg_ctl"))?;
        cmd.arg("-D").arg(&self.data_dir);
        Ok(cmd)
    }

    /// Starts the server and returns when it accepts connections.
    pub fn start(&self) -> Result<(), LocalPgError> {
        let log = self.log_path();
        if !log.exists() {
            fs::write(&log, "").map_err(io_err("create", &log))?;
            chown_to_pg(&log)?;
        }
        let mut cmd = pg_command_in(&self.network.command_prefix, self.bin.program("pg_ctl"))?;
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start"]);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        run(&mut cmd).map_err(|e| match e {
            LocalPgError::Command {
                command,
                status,
                stderr,
            } => LocalPgError::Command {
                command,
                status,
                stderr: format!(
                    "{stderr}\nserver log:\n{}",
                    tail_text(&fs::read_to_string(&log).unwrap_or_default(), 20)
                ),
            },
            other => other,
        })?;
        self.wait_ready(Duration::from_secs(30))
    }

    fn stop_mode(&self, mode: &str) -> Result<(), LocalPgError> {
        if !self.is_running() {
            return Ok(());
        }
        run(self.pg_ctl()?.args(["-m", mode, "-w", "-t", "60", "stop"]))?;
        Ok(())
    }

    /// Fast shutdown; Ok if it was not running.
    pub fn stop(&self) -> Result<(), LocalPgError> {
        self.stop_mode("fast")
    }

    /// Immediate shutdown (a crash, as far as PostgreSQL knows); Ok if not running.
    pub fn stop_immediate(&self) -> Result<(), LocalPgError> {
        self.stop_mode("immediate")
    }

    pub fn is_running(&self) -> bool {
        match self.pg_ctl() {
            Ok(mut cmd) => cmd
                .arg("status")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false),
            Err(_) => false,
        }
    }

    /// `pg_ctl promote`, waiting until the standby accepts writes.
    pub fn promote(&self) -> Result<(), LocalPgError> {
        run(self.pg_ctl()?.args(["-w", "-t", "60", "promote"]))?;
        Ok(())
    }

    /// Sets `synchronous_standby_names` (e.g. `'*'`: any one standby; a standby's name is
    /// its `application_name`, `walreceiver` by default) with `ALTER SYSTEM` and reloads.
    pub fn set_synchronous_standby_names(&self, names: &str) -> Result<(), LocalPgError> {
        let quoted = names.replace('\'', "''");
        self.psql(&format!(
            "alter system set synchronous_standby_names = '{quoted}'"
        ))?;
        self.psql("select pg_reload_conf()")?;
        Ok(())
    }

    /// PID from `postmaster.pid`, if the file exists.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Runs one SQL command with psql and returns its trimmed unaligned output.
    pub fn psql(&self, sql: &str) -> Result<String, LocalPgError> {
        let out = run(pg_command(self.bin.program("psql"))?.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-h",
            &self.host().to_string(),
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// libpq connection string over TCP (loopback unless placed by a [`PgNetwork`]).
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.host(),
            self.port
        )
    }

    /// Waits until `select 1` works or the timeout passes.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), LocalPgError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.psql("select 1") {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(LocalPgError::Timeout {
                        what: format!("PostgreSQL {} accepting connections", self.name),
                        timeout,
                        detail: e.to_string(),
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stops the clusters whatever happens to the test.
    struct Guard(Vec<LocalCluster>);

    impl Drop for Guard {
        fn drop(&mut self) {
            for c in self.0.iter().rev() {
                let _ = c.stop_immediate();
            }
        }
    }

    #[test]
    fn primary_and_streaming_standby() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let bin = PgBin::find().expect("PostgreSQL binaries");
        assert!(bin.major_version().expect("version") >= 12);
        let root = tmp.path().join("pg");
        prepare_parent_dir(&root).expect("prepare");
        let mut guard = Guard(Vec::new());

        let primary =
            LocalCluster::init_primary(&bin, "p", &root.join("p"), free_port().expect("port"))
                .expect("initdb");
        primary.start().expect("start primary");
        guard.0.push(primary.clone());
        primary
            .psql("create table t(x int); insert into t values (42)")
            .expect("write");

        let standby = LocalCluster::init_standby(
            &bin,
            "s",
            &primary,
            &root.join("s"),
            free_port().expect("port"),
        )
        .expect("basebackup");
        standby.start().expect("start standby");
        guard.0.push(standby.clone());
        primary.psql("insert into t values (43)").expect("write");

        let deadline = Instant::now() + Duration::from_secs(30);
        while standby.psql("select count(*) from t").ok().as_deref() != Some("2") {
            assert!(Instant::now() < deadline, "row never reached the standby");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            standby.psql("select pg_is_in_recovery()").expect("query"),
            "t"
        );
        assert_eq!(
            primary.psql("select pg_is_in_recovery()").expect("query"),
            "f"
        );
        assert!(primary.postmaster_pid().is_some());

        standby.stop().expect("stop standby");
        primary.stop().expect("stop primary");
        assert!(!standby.is_running());
        assert!(!primary.is_running());
    }
}
