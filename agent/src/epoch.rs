//! The highest fencing epoch this agent has seen, and the failover it belongs to.
//!
//! Architecture Invariant: once an agent has admitted epoch N it refuses every command
//! from an older epoch, and every command that acts for another failover than N's (a
//! fence, promote or repoint names its failover). The pair is written durably to
//! `<data_dir>/epoch-<agent id>.json` before the command that raised it runs, so a restarted agent
//! remembers it: a deposed coordinator, or a second failover that took the same number,
//! cannot make it act.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use drmesh_protocol::Epoch;

/// What the agent has seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Seen {
    pub epoch: u64,
    /// The failover that raised the epoch to `epoch`, once a command naming it came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<String>,
}

/// Why a command's epoch is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("command epoch {epoch} is older than epoch {seen}")]
    Older { epoch: u64, seen: u64 },
    #[error("epoch {epoch} belongs to failover {owner}, not to {failover}")]
    OtherFailover {
        epoch: u64,
        owner: String,
        failover: String,
    },
}

/// Whether a command of `epoch`, acting for `failover` (if it names one), is admitted
/// after `seen`, and what is seen after it when that changes. Pure.
pub fn judge(seen: &Seen, epoch: Epoch, failover: Option<&str>) -> Result<Option<Seen>, Refused> {
    use std::cmp::Ordering::*;
    match epoch.0.cmp(&seen.epoch) {
        Less => Err(Refused::Older {
            epoch: epoch.0,
            seen: seen.epoch,
        }),
        Greater => Ok(Some(Seen {
            epoch: epoch.0,
            failover: failover.map(str::to_string),
        })),
        Equal => match (&seen.failover, failover) {
            (Some(owner), Some(f)) if owner != f => Err(Refused::OtherFailover {
                epoch: epoch.0,
                owner: owner.clone(),
                failover: f.to_string(),
            }),
            // The first command naming the epoch's failover makes it the owner.
            (None, Some(f)) => Ok(Some(Seen {
                epoch: epoch.0,
                failover: Some(f.to_string()),
            })),
            _ => Ok(None),
        },
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

/// [`Seen`], kept in a file.
pub struct Epochs {
    path: PathBuf,
    seen: Mutex<Seen>,
}

impl Epochs {
    /// Reads `path`; a missing file is epoch 0. A file that does not parse is an error,
    /// never epoch 0: the agent would forget a failover.
    pub fn load(path: &Path) -> Result<Self, EpochError> {
        let file_error = |message: String| EpochError::File {
            path: path.to_path_buf(),
            message,
        };
        let seen = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                file_error(format!(
                    "damaged ({e}); it holds the highest fencing epoch this agent has seen: \
                     restore it, or remove it only if this server is certainly not a primary \
                     another failover replaced"
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Seen::default(),
            Err(e) => return Err(file_error(e.to_string())),
        };
        Ok(Self {
            path: path.to_path_buf(),
            seen: Mutex::new(seen),
        })
    }

    pub fn highest(&self) -> Epoch {
        Epoch(self.seen.lock().epoch)
    }

    /// Admits a command of `epoch` acting for `failover`; what it changes is durable
    /// before this returns `Ok`.
    pub fn admit(&self, epoch: Epoch, failover: Option<&str>) -> Result<(), EpochError> {
        let mut seen = self.seen.lock();
        if let Some(next) = judge(&seen, epoch, failover)? {
            let bytes = serde_json::to_vec(&next).map_err(|e| EpochError::File {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
            drmesh_repo::write_durably(&self.path, &bytes).map_err(|e| EpochError::File {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
            *seen = next;
        }
        Ok(())
    }

    /// As [`Self::admit`] for an epoch the coordinator announces (welcome, heartbeat
    /// acknowledgement): an older one is ignored, a newer one raises the bar.
    pub fn observe(&self, epoch: Epoch) {
        match self.admit(epoch, None) {
            Ok(()) | Err(EpochError::Refused(_)) => {}
            Err(e) => tracing::warn!(error = %e, "could not record the coordinator's epoch"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seen(epoch: u64, failover: Option<&str>) -> Seen {
        Seen {
            epoch,
            failover: failover.map(str::to_string),
        }
    }

    #[test]
    fn older_epochs_are_refused_and_an_equal_one_only_from_its_own_failover() {
        let s = seen(2, Some("fo_a"));
        assert!(matches!(
            judge(&s, Epoch(1), None),
            Err(Refused::Older { .. })
        ));
        assert_eq!(judge(&s, Epoch(2), None), Ok(None));
        assert_eq!(judge(&s, Epoch(2), Some("fo_a")), Ok(None));
        assert!(matches!(
            judge(&s, Epoch(2), Some("fo_b")),
            Err(Refused::OtherFailover { .. })
        ));
        assert_eq!(
            judge(&s, Epoch(3), Some("fo_b")),
            Ok(Some(seen(3, Some("fo_b"))))
        );
        // An epoch first seen in a heartbeat acknowledgement is claimed by the first
        // failover command that names it.
        assert_eq!(
            judge(&seen(3, None), Epoch(3), Some("fo_c")),
            Ok(Some(seen(3, Some("fo_c"))))
        );
    }

    #[test]
    fn the_highest_epoch_survives_a_restart_and_a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("epoch.json");
        let e = Epochs::load(&path).expect("missing is zero");
        assert_eq!(e.highest(), Epoch(0));
        e.admit(Epoch(4), Some("fo_a")).expect("admit");
        e.observe(Epoch(3));
        drop(e);
        let e = Epochs::load(&path).expect("reload");
        assert_eq!(e.highest(), Epoch(4));
        assert!(e.admit(Epoch(4), Some("fo_b")).is_err());
        assert!(e.admit(Epoch(3), None).is_err());
        e.admit(Epoch(4), Some("fo_a")).expect("its own failover");
        std::fs::write(&path, b"{\"epoch\": ").expect("damage");
        let err = Epochs::load(&path).err().expect("damaged file refused");
        assert!(err.to_string().contains("damaged"), "{err}");
    }

    proptest! {
        /// Whatever the order of commands: the epoch seen never falls, an admitted
        /// command is never older than what was seen before it, and two different
        /// failovers are never both admitted at one epoch.
        #[test]
        fn admitted_commands_never_go_back_or_mix_failovers(
            cmds in proptest::collection::vec((0..5u64, proptest::option::of(0..3u8)), 1..40)
        ) {
            let mut s = Seen::default();
            let mut owners: std::collections::HashMap<u64, u8> = Default::default();
            for (epoch, failover) in cmds {
                let name = failover.map(|f| format!("fo_{f}"));
                let before = s.clone();
                match judge(&s, Epoch(epoch), name.as_deref()) {
                    Ok(next) => {
                        prop_assert!(epoch >= before.epoch);
                        if let Some(f) = failover {
                            let owner = *owners.entry(epoch).or_insert(f);
                            prop_assert_eq!(owner, f);
                        }
                        if let Some(n) = next {
                            s = n;
                        }
                    }
                    Err(_) => prop_assert_eq!(&s, &before),
                }
                prop_assert!(s.epoch >= before.epoch);
            }
        }
    }
}
