//! PostgreSQL base backups, the WAL archive and point-in-time recovery, on real clusters,
//! through the agent's one-shot commands (`drmesh-agent backup|restore|wal-push|…`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use drmesh_pg::local::{free_port, prepare_parent_dir, LocalCluster, PgBin};
use drmesh_tests::{bin, wait_for, Mesh};
use serde_json::Value;

/// A primary archiving into a repository through `drmesh-agent wal-push`, stopped (and
/// with every cluster the test made) on drop.
pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    pub(crate) root: PathBuf,
    bin: PgBin,
    config: PathBuf,
    pub(crate) primary: LocalCluster,
    others: Vec<LocalCluster>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for c in self.others.iter().chain([&self.primary]) {
            let _ = c.stop_immediate();
        }
    }
}

fn pg_bin() -> PgBin {
    PgBin::find().unwrap_or_else(|e| {
        panic!("{e}: install PostgreSQL (apt-get install -y postgresql), or set DRMESH_PG_BIN")
    })
}

/// The postgres user's ids: the agent's database commands run as the cluster's owner,
/// as `archive_command` does.
fn postgres_ids() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .expect("the postgres OS user (apt-get install -y postgresql)");
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

/// The `[postgres]` and `[database]` tables of an agent next to `primary`.
pub(crate) fn database_sections(
    root: &Path,
    primary: &LocalCluster,
    archive_timeout: &str,
) -> String {
    format!(
        "[postgres]\nconninfo = \"{conninfo}\"\n\
         [database]\ndata_dir = \"{pgdata}\"\nrepository = \"{root}/repo\"\n\
         archive_timeout = \"{archive_timeout}\"\n",
        root = root.display(),
        conninfo = primary.conninfo(),
        pgdata = primary.data_dir.display(),
    )
}

impl Fixture {
    pub(crate) fn new(archive_timeout: &str) -> Fixture {
        let pg = pg_bin();
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        prepare_parent_dir(&root).expect("make the directory reachable by postgres");
        let port = free_port().expect("port");
        let primary = LocalCluster::init_primary(&pg, "primary", &root.join("primary"), port)
            .expect("initdb");
        let config = root.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "id = \"db-1\"\nregion = \"us-west-2\"\ncoordinator = \"127.0.0.1:1\"\n\
                 data_dir = \"{root}/agent\"\n\
                 [tls]\nca_cert = \"ca.pem\"\ncert = \"a.pem\"\nkey = \"a.key\"\n{}",
                database_sections(&root, &primary, archive_timeout),
                root = root.display(),
            ),
        )
        .expect("write agent.toml");
        let repo = root.join("repo");
        std::fs::create_dir(&repo).expect("repo dir");
        prepare_parent_dir(&repo).expect("repo owned by postgres");
        let fx = Fixture {
            _dir: dir,
            root,
            bin: pg,
            config,
            primary,
            others: Vec::new(),
        };
        fx.primary
            .append_config(
                "postgresql.conf",
                &format!(
                    "archive_mode = on\narchive_command = '{} --config {} wal-push %p'\n",
                    bin("drmesh-agent").display(),
                    fx.config.display()
                ),
            )
            .expect("archive settings");
        fx.primary.start().expect("start primary");
        fx.primary
            .wait_ready(Duration::from_secs(30))
            .expect("primary ready");
        fx
    }

    /// Runs `drmesh-agent --config … ARGS` as the cluster's owner.
    fn agent(&self, args: &[&str]) -> Output {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(bin("drmesh-agent"));
        cmd.arg("--config").arg(&self.config).args(args);
        if let Some((uid, gid)) = postgres_ids() {
            cmd.uid(uid).gid(gid).current_dir("/");
        }
        cmd.output().expect("run drmesh-agent")
    }

    fn agent_ok(&self, args: &[&str]) -> String {
        let out = self.agent(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "drmesh-agent {args:?} failed: {text}");
        text
    }

    pub(crate) fn pgbench(&self, args: &[&str]) {
        let out = Command::new(self.bin.dir().join("pgbench"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.primary.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(args)
            .arg("postgres")
            .output()
            .expect("run pgbench");
        assert!(
            out.status.success(),
            "pgbench {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Switches to a new WAL segment and waits until the archiver has pushed the old one.
    fn archive_current_wal(&self) {
        let last = self
            .primary
            .psql("select pg_walfile_name(pg_switch_wal())")
            .expect("switch wal");
        let archived = wait_for(Duration::from_secs(30), || {
            let done = self
                .primary
                .psql("select coalesce(last_archived_wal, '') from pg_stat_archiver")
                .ok()?;
            (done >= last).then_some(())
        });
        assert!(
            archived.is_some(),
            "segment {last} was not archived within 30 s"
        );
    }

    fn restored(&mut self, name: &str, dir: &Path, port: u16) -> LocalCluster {
        let c = LocalCluster::open(&self.bin, name, dir, port).expect("open restored cluster");
        self.others.push(c.clone());
        c
    }

    /// pgbench writes, the marker `before`, the instant T (UTC, RFC 3339), a second's
    /// pause, more writes (`after`: pgbench arguments), the marker `after`, and the WAL
    /// archived. Returns the data's fingerprint at T, and T.
    fn writes_around_a_marker(&self, after: &[&str]) -> (String, String) {
        self.pgbench(&["-T", "2", "-c", "2"]);
        self.primary
            .psql("insert into markers values ('before')")
            .expect("marker");
        let at_t = fingerprint(&self.primary);
        let t = self
            .primary
            .psql("select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
            .expect("time");
        std::thread::sleep(Duration::from_millis(1100));
        self.pgbench(after);
        self.primary
            .psql("insert into markers values ('after')")
            .expect("marker");
        self.archive_current_wal();
        (at_t, t)
    }

    /// `drmesh-agent restore --backup ID --immediate` into `<root>/<name>`, then the
    /// restored cluster started and recovered.
    fn restore_immediate(&mut self, name: &str, backup: &str) -> LocalCluster {
        let dir = self.root.join(name);
        let port = free_port().expect("port");
        self.agent_ok(&[
            "restore",
            "--backup",
            backup,
            "--immediate",
            "--to",
            dir.to_str().expect("utf-8"),
            "--port",
            &port.to_string(),
        ]);
        let c = self.restored(name, &dir, port);
        start_recovered(&c);
        c
    }
}

/// Starts a restored cluster and waits until its recovery has ended (it accepts writes).
fn start_recovered(c: &LocalCluster) {
    c.start().expect("start the restored cluster");
    let promoted = wait_for(Duration::from_secs(60), || {
        (c.psql("select pg_is_in_recovery()").ok()? == "f").then_some(())
    });
    assert!(
        promoted.is_some(),
        "recovery of {} did not finish: {}",
        c.name,
        std::fs::read_to_string(c.log_path()).unwrap_or_default()
    );
}

/// What the data looked like: each pgbench table's row count and an md5 over its rows
/// in key order, and the marker rows.
fn fingerprint(c: &LocalCluster) -> String {
    c.psql(
        "select string_agg(t, ' | ' order by t) from ( \
           select 'accounts ' || count(*) || ' ' || md5(string_agg(aid || ':' || abalance, ',' order by aid)) as t from pgbench_accounts \
           union all select 'branches ' || count(*) || ' ' || md5(string_agg(bid || ':' || bbalance, ',' order by bid)) from pgbench_branches \
           union all select 'tellers ' || count(*) || ' ' || md5(string_agg(tid || ':' || tbalance, ',' order by tid)) from pgbench_tellers \
           union all select 'history ' || count(*) || ' ' || coalesce(md5(string_agg(tid || ':' || delta || ':' || mtime, ',' order by mtime, tid, delta)), '') from pgbench_history \
           union all select 'markers ' || coalesce(string_agg(note, ',' order by note), '') from markers) s",
    )
    .expect("fingerprint")
}

#[test]
fn point_in_time_recovery_stops_at_the_marker() {
    let mut fx = Fixture::new("30s");
    fx.pgbench(&["-i", "-s", "5", "-q"]);
    fx.primary
        .psql("create table markers (note text primary key)")
        .expect("markers");
    let out = fx.agent_ok(&["backup", "full"]);
    assert!(out.contains("completed"), "{out}");

    let (at_t, t) = fx.writes_around_a_marker(&["-T", "2", "-c", "2"]);

    let target = fx.root.join("pitr");
    let port = free_port().expect("port");
    let out = fx.agent_ok(&[
        "restore",
        "--to",
        target.to_str().expect("utf-8"),
        "--time",
        &t,
        "--port",
        &port.to_string(),
    ]);
    assert!(out.contains("restored full_"), "{out}");
    let pitr = fx.restored("pitr", &target, port);
    start_recovered(&pitr);
    assert_eq!(fingerprint(&pitr), at_t, "the data at T");
    assert_eq!(
        pitr.psql("select string_agg(note, ',') from markers")
            .expect("markers"),
        "before"
    );

    // The same with nothing but the repository: `drmesh repo restore --time`, whose
    // restore_command is `drmesh repo wal-fetch`.
    pitr.stop().expect("stop");
    let offline = fx.root.join("offline");
    let port = free_port().expect("port");
    let out = Command::new(bin("drmesh"))
        .args(["repo", "restore", "--time", &t, "--to"])
        .arg(&offline)
        .arg("--repo")
        .arg(fx.root.join("repo"))
        .args(["--port", &port.to_string()])
        .output()
        .expect("drmesh repo restore");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The restore_command names the repository and that it has no key, so a key in
    // PostgreSQL's environment (DRMESH_REPO_KEY_FILE) cannot change how it reads.
    let conf = std::fs::read_to_string(offline.join("postgresql.auto.conf")).expect("conf");
    assert!(conf.contains("repo wal-fetch --repo"), "{conf}");
    assert!(conf.contains("--unencrypted %f %p"), "{conf}");
    let offline = fx.restored("offline", &offline, port);
    start_recovered(&offline);
    assert_eq!(fingerprint(&offline), at_t, "the data at T, offline");

    // The names restic users expect: `--target` (`--to` stays an alias) and `latest`.
    offline.stop().expect("stop");
    let named = fx.root.join("named");
    let port = free_port().expect("port");
    let out = fx.agent_ok(&[
        "restore",
        "--target",
        named.to_str().expect("utf-8"),
        "--backup",
        "latest",
        "--time",
        &t,
        "--port",
        &port.to_string(),
    ]);
    assert!(out.contains("restored full_"), "{out}");
    let named = fx.restored("named", &named, port);
    start_recovered(&named);
    assert_eq!(fingerprint(&named), at_t, "the data at T, latest");
}

#[test]
fn wal_push_is_idempotent_and_refuses_bad_segments() {
    let fx = Fixture::new("30s");
    fx.pgbench(&["-i", "-s", "1", "-q"]);
    fx.archive_current_wal();
    let archived = fx
        .primary
        .psql("select last_archived_wal from pg_stat_archiver")
        .expect("archived");
    // A copy of an archived segment, pushed again: same content succeeds.
    let copy_dir = fx.root.join("copies");
    std::fs::create_dir(&copy_dir).expect("dir");
    prepare_parent_dir(&copy_dir).expect("chown");
    let fetched = copy_dir.join(&archived);
    fx.agent_ok(&["wal-fetch", &archived, fetched.to_str().expect("utf-8")]);
    fx.agent_ok(&["wal-push", fetched.to_str().expect("utf-8")]);

    // Same name, other content: refused, and the archived copy is unchanged.
    let original = std::fs::read(&fetched).expect("read");
    let mut other = original.clone();
    let at = other.len() - 100;
    other[at] ^= 0xFF;
    std::fs::write(&fetched, &other).expect("write");
    let out = fx.agent(&["wal-push", fetched.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = copy_dir.join("again");
    fx.agent_ok(&["wal-fetch", &archived, again.to_str().expect("utf-8")]);
    assert_eq!(std::fs::read(&again).expect("read"), original);

    // A truncated segment is never acknowledged.
    let truncated = copy_dir.join("000000010000000000000099");
    std::fs::write(&truncated, &original[..original.len() / 2]).expect("write");
    let out = fx.agent(&["wal-push", truncated.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1), "a truncated segment must fail");

    // A missing segment: wal-fetch exits 1 (the end of the archive, for PostgreSQL).
    let out = fx.agent(&[
        "wal-fetch",
        "0000000100000000000000FE",
        copy_dir.join("x").to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1));

    // The repository unreachable: exit 1, so PostgreSQL keeps the segment and retries.
    let unreachable = fx.root.join("unreachable.toml");
    let text = std::fs::read_to_string(&fx.config)
        .expect("config")
        .replace(
            &format!("repository = \"{}/repo\"", fx.root.display()),
            "repository = \"s3://drmesh-test/wal\"\noptions = { endpoint = \"http://127.0.0.1:1\", allow_http = \"true\", region = \"us-east-1\", access_key_id = \"x\", secret_access_key = \"y\" }",
        );
    std::fs::write(&unreachable, text).expect("write");
    let out = Command::new(bin("drmesh-agent"))
        .arg("--config")
        .arg(&unreachable)
        .args(["wal-push", fetched.to_str().expect("utf-8")])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_backup_whose_wal_is_held_back_fails_naming_the_segment() {
    let fx = Fixture::new("3s");
    fx.pgbench(&["-i", "-s", "1", "-q"]);
    // From now on the archiver fails for every segment, as if the archive were cut off.
    fx.primary
        .psql("alter system set archive_command = 'false'")
        .expect("hold back");
    fx.primary.psql("select pg_reload_conf()").expect("reload");
    let out = fx.agent(&["backup", "full"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("is not in the archive") && text.contains("00000001"),
        "{text}"
    );
    // No snapshot was written.
    let list = fx.agent_ok(&["backups"]);
    assert!(!list.contains("full_"), "{list}");
    // The archive's gaps are reported with a non-zero exit once later WAL is there.
    fx.primary
        .psql(&format!(
            "alter system set archive_command = '{} --config {} wal-push %p'",
            bin("drmesh-agent").display(),
            fx.config.display()
        ))
        .expect("restore archive_command");
    fx.primary.psql("select pg_reload_conf()").expect("reload");
    fx.archive_current_wal();
    fx.archive_current_wal();
    let check = fx.agent(&["wal-check"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    // Lose one segment between others: the gap is named and the exit is non-zero.
    let wal_dir = fx.root.join("repo/wal/00000001");
    let mut segments: Vec<String> = std::fs::read_dir(&wal_dir)
        .expect("wal dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "{segments:?}");
    let lost = segments[1].clone();
    std::fs::remove_file(wal_dir.join(&lost)).expect("remove");
    let check = fx.agent(&["wal-check"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&check.stdout).contains(&format!("missing {lost}")),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// Polls a database backup until it leaves IN_PROGRESS.
pub(crate) fn wait_backup(mesh: &Mesh, id: &str) -> Value {
    wait_for(Duration::from_secs(90), || {
        let a = mesh.get(&format!("{DB}/backups/{id}"));
        assert_eq!(a.status, 200, "{}", a.text);
        (a.body["status"] != "IN_PROGRESS").then_some(a.body)
    })
    .unwrap_or_else(|| panic!("backup {id} did not finish:\n{}", mesh.coordinator_log()))
}

pub(crate) const DB: &str = "/v1/backup-recovery/database";

/// Starts an agent next to the fixture's primary with `sections` (its configuration is
/// copied where the cluster's owner, who runs the backup processes, can read it), then
/// asks for a full backup with `body` until the agent has reported its primary (503
/// before). Returns the agent, its configuration and the 202 answer's backup id.
pub(crate) fn agent_and_full_backup(
    fx: &Fixture,
    mesh: &Mesh,
    sections: &str,
    body: Option<&str>,
) -> (drmesh_tests::Proc, PathBuf, String, Value) {
    let files = mesh.issue_agent("db-1", "us-west-2");
    let written = mesh.agent_config("db-1", "us-west-2", &files, sections);
    let config = fx.root.join("agent-daemon.toml");
    std::fs::copy(&written, &config).expect("copy config");
    let agent = mesh.spawn_agent(&config);
    let accepted = wait_for(Duration::from_secs(30), || {
        let a = mesh.post(&format!("{DB}/backup/full"), body);
        (a.status != 503).then_some(a)
    })
    .unwrap_or_else(|| panic!("no agent took the backup:\n{}", agent.log_text()));
    assert_eq!(accepted.status, 202, "{}", accepted.text);
    let id = accepted.body["backupId"]
        .as_str()
        .expect("backupId")
        .to_string();
    (agent, config, id, accepted.body)
}

/// `drmesh ARGS` against the mesh with its admin token: (success, stdout, stderr).
pub(crate) fn drmesh(mesh: &Mesh, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin("drmesh"))
        .args(args)
        .env("DRMESH_URL", mesh.url(""))
        .env("DRMESH_TOKEN", &mesh.admin_token)
        .output()
        .expect("run drmesh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn database_backups_through_the_runbook_endpoints() {
    let fx = Fixture::new("5s");
    fx.pgbench(&["-i", "-s", "1", "-q"]);
    let mesh = Mesh::start(200);
    // The runbook's call.
    let body = r#"{"tags": {"type": "manual", "reason": "pre-deployment", "operator": "admin@propchain.local"}}"#;
    let (mut agent, _, id, accepted) = agent_and_full_backup(
        &fx,
        &mesh,
        &database_sections(&fx.root, &fx.primary, "5s"),
        Some(body),
    );
    let parts: Vec<&str> = id.split('_').collect();
    assert_eq!(parts[0], "full", "{id}");
    assert_eq!(parts[1].len(), 13, "epoch ms in {id}");
    assert_eq!(parts[2].len(), 6, "{id}");
    assert!(accepted["timestamp"].is_string(), "{accepted}");
    assert!(accepted["estimatedDuration"].is_string(), "{accepted}");

    let done = wait_backup(&mesh, &id);
    assert_eq!(done["status"], "COMPLETED", "{done}\n{}", agent.log_text());
    for field in [
        "startLsn",
        "stopLsn",
        "timeline",
        "bytesRead",
        "bytesStored",
        "durationMs",
    ] {
        assert!(!done[field].is_null(), "{field} in {done}");
    }
    assert_eq!(done["tags"]["reason"], "pre-deployment");
    assert_eq!(done["progress"], 100.0);

    let listed = mesh.get(&format!("{DB}/backups?status=COMPLETED"));
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert!(listed.text.contains(&id), "{}", listed.text);
    assert_eq!(mesh.get(&format!("{DB}/backups?status=BOGUS")).status, 400);
    assert_eq!(mesh.get(&format!("{DB}/backups/full_0_nope")).status, 404);

    // The CLI shows the same.
    let (ok, out, err) = drmesh(&mesh, &["backups", "list"]);
    assert!(
        ok && out.contains(&id) && out.contains("COMPLETED"),
        "{out}{err}"
    );
    let (ok, out, err) = drmesh(&mesh, &["backups", "show", &id, "--output", "json"]);
    assert!(ok, "{err}");
    let shown: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(shown["backupId"], id.as_str());

    // An incremental backup builds on it (through the CLI, waiting for it).
    fx.pgbench(&["-T", "1"]);
    let (ok, out, err) = drmesh(&mesh, &["backup", "incr", "--wait", "--output", "json"]);
    assert!(ok, "{out}{err}");
    let done: Value = serde_json::from_str(&out).expect("json");
    let incr = done["backupId"].as_str().expect("backupId").to_string();
    assert!(incr.starts_with("incr_"), "{incr}");
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["outcome"]["parent"], id.as_str(), "{done}");

    // A logical dump on request, exportable as the runbook's full/<backupId>.dump.
    let a = mesh.post(&format!("{DB}/backup/full"), Some(r#"{"type": "logical"}"#));
    assert_eq!(a.status, 202, "{}", a.text);
    let dump = a.body["backupId"].as_str().expect("backupId").to_string();
    assert!(dump.starts_with("full_"), "{dump}");
    let done = wait_backup(&mesh, &dump);
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["backupType"], "logical", "{done}");
    let export = fx.root.join("export/backups/database/full");
    let out = Command::new(bin("drmesh"))
        .args(["repo", "restore", &dump, "--target"])
        .arg(&export)
        .arg("--repo")
        .arg(fx.root.join("repo"))
        .output()
        .expect("drmesh repo restore");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = export.join(format!("{dump}.dump"));
    let listing = Command::new(fx.bin.dir().join("pg_restore"))
        .arg("-l")
        .arg(&file)
        .output()
        .expect("pg_restore");
    assert!(
        listing.status.success(),
        "{}",
        String::from_utf8_lossy(&listing.stderr)
    );
    assert!(
        String::from_utf8_lossy(&listing.stdout).contains("pgbench_accounts"),
        "the dump lists the tables"
    );
    assert_eq!(
        mesh.post(
            &format!("{DB}/backup/incremental"),
            Some(r#"{"type": "logical"}"#)
        )
        .status,
        400
    );

    // With the archive cut off the backup fails, names the segment, and raises the
    // runbook's CRITICAL alert.
    fx.primary
        .psql("alter system set archive_command = 'false'")
        .expect("hold back");
    fx.primary.psql("select pg_reload_conf()").expect("reload");
    let a = mesh.post(&format!("{DB}/backup/full"), None);
    assert_eq!(a.status, 202, "{}", a.text);
    let failed = a.body["backupId"].as_str().expect("backupId").to_string();
    let done = wait_backup(&mesh, &failed);
    assert_eq!(done["status"], "FAILED", "{done}");
    let error = done["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("is not in the archive") && error.contains("00000001"),
        "{done}"
    );
    let alerts = mesh.get("/v1/backup-recovery/monitoring/alerts?severity=CRITICAL");
    assert!(
        alerts.text.contains("Backup Failed") && alerts.text.contains(&failed),
        "{}",
        alerts.text
    );
    agent.kill9();
}

#[test]
fn point_in_time_recovery_through_the_runbook_endpoints() {
    let mut fx = Fixture::new("10s");
    fx.pgbench(&["-i", "-s", "2", "-q"]);
    fx.primary
        .psql("create table markers (note text primary key)")
        .expect("markers");
    let staging = fx.root.join("staging");
    let staging_port = free_port().expect("port");
    let mesh = Mesh::start(200);
    let (mut agent, _, backup, _) = agent_and_full_backup(
        &fx,
        &mesh,
        &format!(
            "{}[database.environments.staging]\ndata_dir = \"{}\"\nport = {staging_port}\n",
            database_sections(&fx.root, &fx.primary, "10s"),
            staging.display()
        ),
        None,
    );
    let done = wait_backup(&mesh, &backup);
    assert_eq!(done["status"], "COMPLETED", "{done}");

    let (at_t, t) = fx.writes_around_a_marker(&["-T", "1"]);

    // Step 1 of the runbook: what a recovery to T would use.
    let info = mesh.get(&format!("/v1/backup-recovery/recovery/point-in-time/{t}"));
    assert_eq!(info.status, 200, "{}", info.text);
    assert_eq!(info.body["recoverable"], true, "{}", info.text);
    assert_eq!(info.body["backupId"], backup.as_str(), "{}", info.text);
    for field in [
        "earliestRecoverableTime",
        "latestRecoverableTime",
        "walStart",
        "walEnd",
        "estimatedDuration",
    ] {
        assert!(!info.body[field].is_null(), "{field} in {}", info.text);
    }
    let before = mesh.get("/v1/backup-recovery/recovery/point-in-time/2020-01-01T00:00:00Z");
    assert_eq!(before.status, 200, "{}", before.text);
    assert_eq!(before.body["recoverable"], false, "{}", before.text);
    assert!(before.body["reason"].is_string(), "{}", before.text);
    // What `date --rfc-3339=seconds` prints (a space, +00:00) is understood too.
    let spaced = t.replacen('T', " ", 1).replace('Z', "+00:00");
    let a = mesh.get(&format!(
        "/v1/backup-recovery/recovery/point-in-time/{}",
        spaced.replace(' ', "%20").replace('+', "%2B")
    ));
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        mesh.get("/v1/backup-recovery/recovery/point-in-time/yesterday")
            .status,
        400
    );
    let (ok, out, err) = drmesh(&mesh, &["pitr", "info", &spaced]);
    assert!(
        ok && out.contains("recoverable") && out.contains(&backup),
        "{out}{err}"
    );

    // Bad requests change nothing.
    let pitr = "/v1/backup-recovery/disaster-recovery/point-in-time-recovery";
    for bad in [
        r#"{"targetTimestamp": "2024-01-15T14:30:00Z"}"#.to_string(),
        r#"{"targetTimestamp": "noon", "targetEnvironment": "staging"}"#.to_string(),
        format!(
            r#"{{"targetTimestamp": "{t}", "targetEnvironment": "staging", "backupId": "docs_1_abc"}}"#
        ),
    ] {
        assert_eq!(mesh.post(pitr, Some(&bad)).status, 400, "{bad}");
    }
    let unknown = format!(r#"{{"targetTimestamp": "{t}", "targetEnvironment": "nowhere"}}"#);
    assert_eq!(mesh.post(pitr, Some(&unknown)).status, 503);

    // Step 2: the recovery into staging.
    let body = format!(
        r#"{{"targetTimestamp": "{t}", "backupId": "{backup}", "targetEnvironment": "staging"}}"#
    );
    let a = mesh.post(pitr, Some(&body));
    assert_eq!(a.status, 202, "{}", a.text);
    assert_eq!(a.body["status"], "INITIATED", "{}", a.text);

    // Step 3: progress and result in the DR status.
    let run = wait_for(Duration::from_secs(120), || {
        let s = mesh.get("/v1/backup-recovery/disaster-recovery/status");
        let run = s.body["pointInTimeRecovery"].clone();
        (run.is_object() && run["status"] != "IN_PROGRESS").then_some(run)
    })
    .unwrap_or_else(|| panic!("the recovery did not finish:\n{}", agent.log_text()));
    assert_eq!(run["status"], "COMPLETED", "{run}\n{}", agent.log_text());
    assert_eq!(run["outcome"]["port"], staging_port, "{run}");
    let recovered = fx.restored("staging", &staging, staging_port);
    assert_eq!(
        recovered.psql("select pg_is_in_recovery()").expect("role"),
        "f"
    );
    assert_eq!(fingerprint(&recovered), at_t, "the data at T");
    agent.kill9();
}

#[test]
fn an_agent_killed_during_a_backup_leaves_no_snapshot_and_the_next_backup_succeeds() {
    let fx = Fixture::new("10s");
    fx.pgbench(&["-i", "-s", "30", "-q"]);
    let mesh = Mesh::start(200);
    let (mut agent, config, id, _) = agent_and_full_backup(
        &fx,
        &mesh,
        &database_sections(&fx.root, &fx.primary, "10s"),
        None,
    );
    // Kill the agent once its backup process is copying.
    let copying = wait_for(Duration::from_secs(20), || {
        let procs = drmesh_tests::processes_mentioning(&id);
        (!procs.is_empty()).then_some(())
    });
    assert!(copying.is_some(), "no backup process for {id}");
    std::thread::sleep(Duration::from_millis(300));
    agent.kill9();

    // The backup process notices and stops; the record ends FAILED.
    let gone = wait_for(Duration::from_secs(20), || {
        drmesh_tests::processes_mentioning(&id)
            .is_empty()
            .then_some(())
    });
    assert!(gone.is_some(), "the backup process outlived its agent");
    let done = wait_backup(&mesh, &id);
    assert_eq!(done["status"], "FAILED", "{done}");
    let list = fx.agent_ok(&["backups"]);
    assert!(
        !list.contains(&id),
        "a snapshot of the killed backup exists: {list}"
    );
    assert_eq!(
        fx.primary
            .psql("select count(*) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid() and query like '%pg_backup%'")
            .expect("sessions"),
        "0",
        "the server is left in backup mode"
    );

    // The next backup succeeds, and the repository verifies.
    let _agent = mesh.spawn_agent(&config);
    let accepted = wait_for(Duration::from_secs(30), || {
        let a = mesh.post(&format!("{DB}/backup/full"), None);
        (a.status == 202).then_some(a)
    })
    .expect("a second backup accepted");
    let next = accepted.body["backupId"].as_str().expect("id").to_string();
    assert_eq!(wait_backup(&mesh, &next)["status"], "COMPLETED");
    let out = Command::new(bin("drmesh"))
        .args(["repo", "verify", &next, "--read-data", "--repo"])
        .arg(fx.root.join("repo"))
        .output()
        .expect("verify");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_full_backup_and_a_chain_of_three_incrementals_each_restore_to_their_stop_point() {
    let mut fx = Fixture::new("30s");
    fx.pgbench(&["-i", "-s", "2", "-q"]);
    fx.primary
        .psql("create table markers (note text primary key)")
        .expect("markers");
    let mut taken: Vec<(String, String)> = Vec::new();
    for (i, kind) in ["full", "incr", "incr", "incr"].iter().enumerate() {
        if i > 0 {
            // A hundred transactions: a few percent of the pages change.
            fx.pgbench(&["-t", "100"]);
        }
        fx.primary
            .psql(&format!("insert into markers values ('backup {i}')"))
            .expect("marker");
        let out = fx.agent_ok(&["backup", kind]);
        let id = out
            .split_whitespace()
            .nth(1)
            .expect("backup id in the output")
            .to_string();
        assert!(id.starts_with(&format!("{kind}_")), "{out}");
        // Nothing is written between the backup's end and this fingerprint.
        taken.push((id, fingerprint(&fx.primary)));
    }
    // Each incremental read only what changed and shares the rest with its parent.
    let listing = fx.agent_ok(&["backups", "--output", "json"]);
    let list: Value = serde_json::from_str(&listing).expect("json");
    let list = list.as_array().expect("array");
    for (i, (id, _)) in taken.iter().enumerate().skip(1) {
        let b = list
            .iter()
            .find(|b| b["backupId"] == id.as_str())
            .expect("listed");
        assert_eq!(b["parent"], taken[i - 1].0.as_str(), "{b}");
        let (read, total) = (
            b["stats"]["bytesRead"].as_u64().expect("read"),
            b["stats"]["bytes"].as_u64().expect("bytes"),
        );
        assert!(
            read < total,
            "incremental {id} read {read} of {total} bytes"
        );
        // Page by page: of the files it read, it stored little more than the pages
        // pgbench changed.
        let new = b["stats"]["bytesNew"].as_u64().expect("new");
        assert!(
            new * 2 < read,
            "incremental {id} stored {new} new bytes of {read} read"
        );
    }
    for (i, (id, want)) in taken.iter().enumerate() {
        let c = fx.restore_immediate(&format!("chain-{i}"), id);
        assert_eq!(&fingerprint(&c), want, "{id} restored to its stop point");
        c.stop().expect("stop");
    }
}

#[test]
fn a_standby_is_backed_up_when_allowed_and_restores_to_the_primarys_data() {
    let mut fx = Fixture::new("30s");
    fx.pgbench(&["-i", "-s", "2", "-q"]);
    fx.pgbench(&["-t", "200"]);
    let port = free_port().expect("port");
    let standby = LocalCluster::init_standby(
        &fx.bin,
        "standby",
        &fx.primary,
        &fx.root.join("standby"),
        port,
    )
    .expect("pg_basebackup");
    fx.others.push(standby.clone());
    standby.start().expect("start standby");
    let config = |allow: bool| {
        let path = fx.root.join(format!("standby-{allow}.toml"));
        let text = std::fs::read_to_string(&fx.config)
            .expect("config")
            .replace(&fx.primary.conninfo(), &standby.conninfo())
            .replace(
                &format!("data_dir = \"{}\"", fx.primary.data_dir.display()),
                &format!(
                    "data_dir = \"{}\"\nbackup_standby = {allow}",
                    standby.data_dir.display()
                ),
            );
        std::fs::write(&path, text).expect("write");
        path
    };
    let run = |config: &Path| {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(bin("drmesh-agent"));
        cmd.arg("--config").arg(config).args(["backup", "full"]);
        if let Some((uid, gid)) = postgres_ids() {
            cmd.uid(uid).gid(gid).current_dir("/");
        }
        cmd.output().expect("run")
    };
    // Refused unless asked for.
    let out = run(&config(false));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("standby"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Wait until the standby has replayed everything, so both hold the same data.
    let want = fingerprint_without_markers(&fx.primary);
    let caught_up = wait_for(Duration::from_secs(30), || {
        (fingerprint_without_markers(&standby) == want).then_some(())
    });
    assert!(caught_up.is_some(), "the standby did not catch up");
    let out = run(&config(true));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let id = text
        .split_whitespace()
        .nth(1)
        .expect("backup id")
        .to_string();
    let restored = fx.restore_immediate("from-standby", &id);
    assert_eq!(fingerprint_without_markers(&restored), want);
}

/// [`fingerprint`] for clusters without the markers table.
fn fingerprint_without_markers(c: &LocalCluster) -> String {
    c.psql(
        "select count(*) || ' ' || md5(string_agg(aid || ':' || abalance, ',' order by aid)) from pgbench_accounts",
    )
    .unwrap_or_default()
}

#[test]
fn tablespaces_are_backed_up_and_restored_inside_the_new_data_directory() {
    let mut fx = Fixture::new("30s");
    let space = fx.root.join("tablespace");
    std::fs::create_dir(&space).expect("dir");
    prepare_parent_dir(&space).expect("owned by postgres");
    fx.primary
        .psql(&format!(
            "create tablespace archive location '{}'",
            space.display()
        ))
        .expect("create tablespace");
    fx.primary
        .psql("create table old_orders tablespace archive as select i, md5(i::text) as note from generate_series(1, 50000) i")
        .expect("table in the tablespace");
    let want = fx
        .primary
        .psql("select count(*) || md5(string_agg(note, ',' order by i)) from old_orders")
        .expect("fingerprint");
    let out = fx.agent_ok(&["backup", "full"]);
    let id = out
        .split_whitespace()
        .nth(1)
        .expect("backup id")
        .to_string();
    let restored = fx.restore_immediate("with-tablespace", &id);
    let dir = restored.data_dir.clone();
    let links: Vec<_> = std::fs::read_dir(dir.join("pg_tblspc"))
        .expect("pg_tblspc")
        .flatten()
        .collect();
    assert_eq!(links.len(), 1, "one tablespace");
    let link = std::fs::read_link(links[0].path()).expect("a link");
    assert!(
        link.starts_with(&dir),
        "the tablespace is restored inside the new data directory, not at production's path: {}",
        link.display()
    );
    assert_eq!(
        restored
            .psql("select count(*) || md5(string_agg(note, ',' order by i)) from old_orders")
            .expect("read the table"),
        want
    );
}
