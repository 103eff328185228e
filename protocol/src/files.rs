//! Files that hold secrets (keys, the state store, password files): whether one is open
//! to others than its owner, for the warning each program logs at start.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// What to tell the operator when `path` (a file, or a directory) can be read or
/// written by its group or by anyone: the mode, and the `chmod` that mends it. `None`
/// when it is private, or does not exist.
pub fn loose_mode(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return None;
    }
    let want = if meta.is_dir() { "700" } else { "600" };
    Some(format!(
        "{} has mode {mode:o}: others than its owner can read it; chmod {want} {}",
        path.display(),
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_file_is_quiet_and_a_loose_one_is_named_with_its_cure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("k");
        std::fs::write(&f, "x").expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(loose_mode(&f), None);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let said = loose_mode(&f).expect("loose");
        assert!(said.contains("644") && said.contains("chmod 600"), "{said}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        assert!(loose_mode(dir.path()).expect("loose").contains("chmod 700"));
        assert_eq!(loose_mode(&dir.path().join("missing")), None);
    }
}
