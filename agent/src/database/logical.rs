//! Logical dumps on request: `pg_dump -Fc` streamed into the repository as one file,
//! `<backupId>.dump`, so that restoring the snapshot into `backups/database/full/` gives
//! the runbook's `backups/database/full/<backupId>.dump`.

use std::io::Read;
use std::process::{Child, ChildStdout, Command, Stdio};

use super::DatabaseError;
use crate::config::DatabaseConfig;
use drmesh_repo::{Repository, Snapshot, StreamBackup, Tags};

/// The snapshot kind of a logical dump.
pub const KIND: &str = "postgres-logical";

/// `pg_dump`'s output; its end is an error unless `pg_dump` exited 0, so a dump that
/// failed half way is never stored as if it were whole.
struct DumpReader {
    out: ChildStdout,
    child: Child,
    stderr: std::thread::JoinHandle<String>,
    done: bool,
}

impl Read for DumpReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let n = self.out.read(buf)?;
        if n > 0 || buf.is_empty() {
            return Ok(n);
        }
        self.done = true;
        let status = self.child.wait()?;
        if status.success() {
            return Ok(0);
        }
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new))
            .join()
            .unwrap_or_default();
        Err(std::io::Error::other(format!(
            "pg_dump ended with {status}: {}",
            stderr.trim()
        )))
    }
}

impl Drop for DumpReader {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Dumps the database of `conninfo` into a new snapshot `id`.
pub async fn run(
    repo: &Repository,
    db: &DatabaseConfig,
    conninfo: &str,
    id: &str,
    tags: Tags,
) -> Result<Snapshot, DatabaseError> {
    let bin = crate::postgres::pg_bin_of(db).map_err(|e| DatabaseError::Postgres(e.to_string()))?;
    let mut child = Command::new(bin.dir().join("pg_dump"))
        .args(["-Fc", "--no-password", "-d", conninfo])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| DatabaseError::Postgres(format!("start pg_dump: {e}")))?;
    let (Some(out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        let _ = child.kill();
        return Err(DatabaseError::Postgres(
            "pg_dump has no output pipes".into(),
        ));
    };
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    let reader = DumpReader {
        out,
        child,
        stderr,
        done: false,
    };
    let dbname = conninfo
        .parse::<tokio_postgres::Config>()
        .ok()
        .and_then(|c| c.get_dbname().map(str::to_string))
        .unwrap_or_else(|| "postgres".into());
    let req = StreamBackup {
        id: id.to_string(),
        kind: KIND.to_string(),
        name: format!("{id}.dump"),
        source: format!("pg_dump {dbname}").into(),
        tags,
    };
    Ok(repo.backup_stream(req, reader).await?)
}
