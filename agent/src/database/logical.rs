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

/// `conninfo` without its password, and the password: a `password=…` pair of a
/// key/value conninfo (quoted or not), or the password of a URI's user info or its
/// `password` query parameter.
pub fn split_password(conninfo: &str) -> (String, Option<String>) {
    let c = conninfo.trim();
    if c.starts_with("postgres://") || c.starts_with("postgresql://") {
        return split_uri_password(c);
    }
    let bytes = c.as_bytes();
    let mut out = String::with_capacity(c.len());
    let mut password = None;
    let mut i = 0;
    while i < bytes.len() {
        // One `key = value` pair (libpq allows spaces around `=`).
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &c[start..i];
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
        }
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let vstart = i;
        let mut value = Vec::new();
        if i < bytes.len() && bytes[i] == b'\'' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'\'' {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                value.push(bytes[i]);
                i += 1;
            }
            i = (i + 1).min(bytes.len());
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            value.extend_from_slice(&bytes[vstart..i]);
        }
        let value = String::from_utf8_lossy(&value).into_owned();
        if key.is_empty() {
            continue;
        }
        if key == "password" {
            password = Some(value);
        } else {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(key);
            out.push('=');
            out.push_str(&c[vstart..i]);
        }
    }
    (out, password)
}

fn split_uri_password(uri: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return (uri.to_string(), None);
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let mut password = None;
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, pw)) => {
                password = Some(pw.to_string());
                format!("{user}@{host}")
            }
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|kv| match kv.split_once('=') {
                    Some(("password", v)) => {
                        password = Some(v.to_string());
                        false
                    }
                    _ => true,
                })
                .collect();
            if kept.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{}", kept.join("&"))
            }
        }
        None => tail.to_string(),
    };
    (format!("{scheme}://{authority}{tail}"), password)
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
    // The password goes through the environment, never the command line (which any
    // local user can read in /proc).
    let (conninfo, password) = split_password(conninfo);
    let mut command = Command::new(bin.dir().join("pg_dump"));
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    let mut child = command
        .args(["-Fc", "--no-password", "-d", &conninfo])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_leaves_the_conninfo() {
        assert_eq!(
            split_password("host=db port=5432 user=app password=s3cr3t dbname=x"),
            (
                "host=db port=5432 user=app dbname=x".into(),
                Some("s3cr3t".into())
            )
        );
        assert_eq!(
            split_password("host=db password = 'a b\\'cé' dbname=x"),
            ("host=db dbname=x".into(), Some("a b'cé".into()))
        );
        assert_eq!(
            split_password("host=db dbname=x"),
            ("host=db dbname=x".into(), None)
        );
        assert_eq!(
            split_password("postgresql://app:s3cr3t@db:5432/x?sslmode=require"),
            (
                "postgresql://app@db:5432/x?sslmode=require".into(),
                Some("s3cr3t".into())
            )
        );
        assert_eq!(
            split_password("postgres://app@db/x?password=p&sslmode=disable"),
            (
                "postgres://app@db/x?sslmode=disable".into(),
                Some("p".into())
            )
        );
    }
}
