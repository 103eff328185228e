//! `kill -9` during retention enforcement and garbage collection (issue 7): a synthetic
//! repository big enough that `drmesh repo retention` takes seconds, the process killed
//! at several moments of one enforcement (while manifests go, once `gc/pending` is
//! written, twice while packs are being deleted), then run to the end. What is left must
//! be exactly what one uninterrupted run keeps, every snapshot must verify, and running it
//! again deletes nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use drmesh_tests::{bin, walk_files, Proc};
use serde_json::Value;

/// Document snapshots: 30 days hot, no calendar tier that would send any to the cold
/// archive (so the result does not depend on whether an archive is configured).
const POLICY: &str = "[documents]\nfull = \"30days\"\nincremental = \"7days\"\nweekly = 4\nmonthly = 0\nyearly = 0\n";

/// One snapshot a day: 270 of the 300 expire, each with a pack of its own.
const SNAPSHOTS: &str = "300";

/// How long one moment may take to come.
const MOMENT_TIMEOUT: Duration = Duration::from_secs(180);

/// A repository directory and the fixed settings every run uses.
struct Setup {
    policy: PathBuf,
    /// The instant every run applies the policy as of, so each plans the same.
    now: String,
}

impl Setup {
    fn command(&self, repo: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("drmesh"));
        cmd.args(["repo", args[0]])
            .arg("--repo")
            .arg(repo)
            .args(&args[1..])
            .env_remove("DRMESH_REPO")
            .env_remove("DRMESH_REPO_KEY_FILE")
            .env_remove("DRMESH_REPO_PASSPHRASE");
        cmd
    }

    fn retention_args(&self) -> Vec<String> {
        vec![
            "retention".into(),
            "--policy".into(),
            self.policy.display().to_string(),
            "--now".into(),
            self.now.clone(),
            "--output".into(),
            "json".into(),
        ]
    }

    /// `drmesh repo ARGS --repo REPO`, which must succeed; its standard output.
    fn ok(&self, repo: &Path, args: &[&str]) -> String {
        let out = self.command(repo, args).output().expect("run drmesh");
        assert!(
            out.status.success(),
            "drmesh repo {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One enforcement to the end (`--dry-run` in `extra` for a dry run): its report.
    fn enforce(&self, repo: &Path, extra: &[&str]) -> Value {
        let mut args = self.retention_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        serde_json::from_str(&self.ok(repo, &args)).expect("JSON report")
    }

    /// An enforcement in the background, its output in `log`.
    fn spawn(&self, repo: &Path, log: &Path) -> Proc {
        let mut args: Vec<String> = vec!["repo".into()];
        args.extend(self.retention_args());
        args.extend(["--repo".into(), repo.display().to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::spawn("retention", &bin("drmesh"), &args, log)
    }
}

/// The names of the files under `repo/<dir>`.
fn names(repo: &Path, dir: &str) -> BTreeSet<String> {
    walk_files(&repo.join(dir))
        .into_iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn ids(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|k| {
            k.get("snapshotId")
                .unwrap_or(k)
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// A moment of an enforcement at which it is killed, seen from the repository's files.
#[derive(Clone, Copy, Debug)]
enum Moment {
    /// Fewer manifests than when the run started: the plan's snapshots are being removed.
    ForgettingSnapshots,
    /// `gc/pending` exists: garbage collection has scheduled the unreferenced packs.
    Scheduled,
    /// Fewer packs than when the run started, with `gc/pending` there: the sweep is
    /// deleting.
    Deleting,
}

/// What the repository looks like, as far as the moments go.
#[derive(Clone, Copy, Debug)]
struct Seen {
    snapshots: usize,
    packs: usize,
    pending: bool,
}

fn look(repo: &Path) -> Seen {
    Seen {
        snapshots: walk_files(&repo.join("snapshots")).len(),
        packs: walk_files(&repo.join("data")).len(),
        pending: repo.join("gc/pending").exists(),
    }
}

impl Moment {
    fn reached(self, start: Seen, now: Seen) -> bool {
        match self {
            Moment::ForgettingSnapshots => now.snapshots < start.snapshots,
            Moment::Scheduled => now.pending,
            Moment::Deleting => now.pending && now.packs < start.packs,
        }
    }
}

#[test]
fn kill_9_during_enforcement_and_gc_then_again_keeps_what_one_run_keeps_and_everything_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let made = Command::new(bin("drmesh-repo-synth"))
        .arg("--repo")
        .arg(&repo)
        .args(["--snapshots", SNAPSHOTS])
        .args(["--new-chunks", "1000", "--shared-chunks", "500"])
        .output()
        .expect("run drmesh-repo-synth");
    assert!(
        made.status.success(),
        "drmesh-repo-synth: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let setup = Setup {
        policy,
        now: chrono::Utc::now().to_rfc3339(),
    };
    let before_snapshots = names(&repo, "snapshots");
    let before_packs = names(&repo, "data");

    // What one run would do, from a dry run, which changes nothing.
    let dry = setup.enforce(&repo, &["--dry-run"]);
    let mut keep = ids(&dry["kept"]);
    keep.extend(ids(&dry["awaitingArchive"]));
    let doomed = ids(&dry["deleted"]);
    assert_eq!(keep.len(), 30, "{dry}");
    assert_eq!(doomed.len(), 270, "{dry}");
    assert_eq!(names(&repo, "snapshots"), before_snapshots);
    assert_eq!(names(&repo, "data"), before_packs);

    // One uninterrupted run on a copy: what the interrupted one must end up equal to.
    let twin = dir.path().join("twin");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&repo)
        .arg(&twin)
        .status()
        .unwrap();
    assert!(copied.success());
    let started = Instant::now();
    let whole = setup.enforce(&twin, &[]);
    let whole_took = started.elapsed();
    assert_eq!(ids(&whole["deleted"]), doomed, "{whole}");
    assert!(whole["gcError"].is_null(), "{whole}");
    assert!(whole["packsDeleted"].as_u64().unwrap() > 200, "{whole}");
    assert_eq!(names(&twin, "snapshots"), keep);
    eprintln!(
        "one uninterrupted enforcement: {:.1} s, {} packs deleted",
        whole_took.as_secs_f64(),
        whole["packsDeleted"]
    );

    // The same enforcement, killed at each moment in turn and started again.
    let moments = [
        Moment::ForgettingSnapshots,
        Moment::Scheduled,
        Moment::Deleting,
        Moment::Deleting,
    ];
    for (n, moment) in moments.into_iter().enumerate() {
        let log = dir.path().join(format!("run-{n}.log"));
        let start = look(&repo);
        let mut run = setup.spawn(&repo, &log);
        let deadline = Instant::now() + MOMENT_TIMEOUT;
        let seen = loop {
            let now = look(&repo);
            if moment.reached(start, now) {
                run.kill9();
                break now;
            }
            assert!(
                run.is_running(),
                "run {n} ended before {moment:?} (from {start:?}, now {now:?}):\n{}",
                run.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "no {moment:?} within {MOMENT_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        let after = look(&repo);
        eprintln!("run {n} killed at {moment:?}: from {start:?}, seen {seen:?}, left {after:?}");
        if matches!(moment, Moment::Deleting) {
            // Killed in the middle: some packs gone, not all that go.
            assert!(
                after.packs < start.packs && after.packs > names(&twin, "data").len(),
                "run {n} was not killed while deleting: from {start:?}, left {after:?}"
            );
        }
    }

    // Run to the end: it finishes the job.
    let done = setup.enforce(&repo, &[]);
    assert!(done["gcError"].is_null(), "{done}");
    assert_eq!(done["packsPending"], 0, "{done}");
    assert_eq!(ids(&done["kept"]), ids(&whole["kept"]), "{done}");
    assert!(!repo.join("gc/pending").exists());
    assert_eq!(
        names(&repo, "snapshots"),
        keep,
        "the snapshots one run keeps"
    );
    assert_eq!(
        names(&repo, "data"),
        names(&twin, "data"),
        "the packs one run keeps"
    );

    // Every snapshot left verifies, reading all its data (`drmesh repo verify` exits 1
    // when anything is damaged or missing).
    for id in &keep {
        setup.ok(&repo, &["verify", id, "--read-data"]);
    }

    // Again: nothing more goes.
    let again = setup.enforce(&repo, &[]);
    assert_eq!(again["deleted"], serde_json::json!([]), "{again}");
    assert_eq!(again["walDeleted"], serde_json::json!([]), "{again}");
    assert_eq!(again["packsDeleted"], 0, "{again}");
    assert!(again["gcError"].is_null(), "{again}");
    assert_eq!(names(&repo, "snapshots"), keep);
    assert_eq!(names(&repo, "data"), names(&twin, "data"));
}
