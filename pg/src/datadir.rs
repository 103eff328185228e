//! Which files of a data directory are what, by their path relative to it.

/// Where a drmesh restore keeps a backup's tablespaces, inside the restored data
/// directory (`pg_tblspc/<oid>` links point there), so that a restore never touches the
/// paths production's tablespaces use. A base backup leaves this directory out.
pub const TABLESPACES_DIR: &str = "drmesh_tablespaces";

/// `pg_tblspc/<oid>`: a tablespace's link, whose target is backed up in its place (and
/// restored there, inside the data directory).
pub fn tablespace_link(rel: &str) -> bool {
    rel.strip_prefix("pg_tblspc/")
        .is_some_and(|oid| !oid.is_empty() && oid.bytes().all(|b| b.is_ascii_digit()))
}

/// A relation's main fork (`base/<db>/<relfilenode>[.<segment>]`, `global/…`, or in a
/// tablespace): the files whose every change is WAL-logged with the page's LSN, copied
/// page by page in an incremental backup. Free-space maps (`_fsm`), visibility maps
/// (`_vm`), init forks and everything else are copied whole when they changed.
pub fn relation_main_fork(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let file_ok = |name: &str| match name.split_once('.') {
        Some((node, seg)) => numeric(node) && numeric(seg),
        None => numeric(name),
    };
    match parts.as_slice() {
        ["base", db, name] => numeric(db) && file_ok(name),
        ["global", name] => file_ok(name),
        ["pg_tblspc", spc, _version, db, name] => numeric(spc) && numeric(db) && file_ok(name),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tablespace_links() {
        assert!(super::tablespace_link("pg_tblspc/16384"));
        for no in [
            "pg_tblspc",
            "pg_tblspc/",
            "pg_tblspc/16384/PG_15",
            "base/16384",
            "pg_tblspc/x",
        ] {
            assert!(!super::tablespace_link(no), "{no}");
        }
    }

    #[test]
    fn relation_main_forks() {
        use super::relation_main_fork;
        for yes in [
            "base/5/16384",
            "base/5/16384.1",
            "global/1262",
            "pg_tblspc/16400/PG_15_202209061/5/16401",
        ] {
            assert!(relation_main_fork(yes), "{yes}");
        }
        for no in [
            "base/5/16384_fsm",
            "base/5/16384_vm",
            "base/5/16384_init",
            "base/5/pg_filenode.map",
            "base/5/PG_VERSION",
            "global/pg_control",
            "pg_xact/0000",
            "base/5",
            "base/x/16384",
            "base/5/16384.",
        ] {
            assert!(!relation_main_fork(no), "{no}");
        }
    }
}
