//! What each command over QUIC produces: one variant per command, carried typed in its
//! `CommandResult`, so no caller re-parses a JSON string.
//!
//! `From<T> for CommandOutcome` lets the agent hand back whatever the command's function
//! returned; `TryFrom<CommandOutcome> for T` lets the coordinator take out the one type
//! it asked for, and refuse anything else.

use serde::{Deserialize, Serialize};

use crate::api::{
    ArchivingOutcome, CatchUpOutcome, DatabaseBackupOutcome, DatabaseVerificationReport,
    DemoteOutcome, DocumentBackupOutcome, DocumentRestoreOutcome, DocumentVerification,
    DocumentsReport, DrTestReport, PitrInfo, PitrOutcome, PromoteOutcome, RejoinOutcome,
};
use crate::copies::CopiesOutcome;
use crate::retention::RetentionOutcome;

/// The outcome of a command that succeeded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", content = "outcome", rename_all = "snake_case")]
pub enum CommandOutcome {
    /// `Ping`: the agent's clock, milliseconds since the Unix epoch.
    Pong {
        agent_time_ms: u64,
    },
    /// Commands that report nothing beyond their message (`ProbePostgres`, `Fence`).
    Done,
    DocumentsBackup(DocumentBackupOutcome),
    DocumentsVerify(DocumentVerification),
    DocumentsRestore(DocumentRestoreOutcome),
    DocumentsCheck(DocumentsReport),
    DatabaseBackup(DatabaseBackupOutcome),
    PitrInfo(PitrInfo),
    PointInTimeRecovery(PitrOutcome),
    VerifyDatabaseBackup(DatabaseVerificationReport),
    DrTest(DrTestReport),
    EnforceRetention(RetentionOutcome),
    Promote(PromoteOutcome),
    Demote(DemoteOutcome),
    CatchUp(CatchUpOutcome),
    ConfirmArchiving(ArchivingOutcome),
    Rejoin(RejoinOutcome),
    /// `Repoint`: the timeline the standby now receives.
    Repoint {
        timeline: u32,
    },
    #[serde(rename = "replicate")]
    Copy(CopiesOutcome),
}

impl From<()> for CommandOutcome {
    fn from(_: ()) -> Self {
        CommandOutcome::Done
    }
}

/// An outcome that is not the one the caller asked for.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("the agent answered with a {got} outcome, not {want}")]
pub struct WrongOutcome {
    pub want: &'static str,
    pub got: String,
}

macro_rules! typed_outcomes {
    ($($variant:ident => $ty:ty, $tag:literal;)*) => {
        impl CommandOutcome {
            /// The variant's name on the wire, for messages.
            pub fn name(&self) -> &'static str {
                match self {
                    CommandOutcome::Pong { .. } => "pong",
                    CommandOutcome::Done => "done",
                    CommandOutcome::Repoint { .. } => "repoint",
                    $(CommandOutcome::$variant(_) => $tag,)*
                }
            }
        }

        $(
            impl From<$ty> for CommandOutcome {
                fn from(v: $ty) -> Self {
                    CommandOutcome::$variant(v)
                }
            }

            impl TryFrom<CommandOutcome> for $ty {
                type Error = WrongOutcome;
                fn try_from(o: CommandOutcome) -> Result<Self, WrongOutcome> {
                    match o {
                        CommandOutcome::$variant(v) => Ok(v),
                        other => Err(WrongOutcome {
                            want: stringify!($variant),
                            got: other.name().to_string(),
                        }),
                    }
                }
            }
        )*
    };
}

typed_outcomes! {
    DocumentsBackup => DocumentBackupOutcome, "documents_backup";
    DocumentsVerify => DocumentVerification, "documents_verify";
    DocumentsRestore => DocumentRestoreOutcome, "documents_restore";
    DocumentsCheck => DocumentsReport, "documents_check";
    DatabaseBackup => DatabaseBackupOutcome, "database_backup";
    PitrInfo => PitrInfo, "pitr_info";
    PointInTimeRecovery => PitrOutcome, "point_in_time_recovery";
    VerifyDatabaseBackup => DatabaseVerificationReport, "verify_database_backup";
    DrTest => DrTestReport, "dr_test";
    EnforceRetention => RetentionOutcome, "enforce_retention";
    Promote => PromoteOutcome, "promote";
    Demote => DemoteOutcome, "demote";
    CatchUp => CatchUpOutcome, "catch_up";
    ConfirmArchiving => ArchivingOutcome, "confirm_archiving";
    Rejoin => RejoinOutcome, "rejoin";
    Copy => CopiesOutcome, "replicate";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_goes_in_and_comes_out_as_its_own_type_only() {
        let p = PromoteOutcome {
            was_standby: true,
            timeline: 2,
            lsn: "0/3000000".into(),
            duration_ms: 120,
        };
        let o: CommandOutcome = p.clone().into();
        assert_eq!(o.name(), "promote");
        assert_eq!(PromoteOutcome::try_from(o.clone()), Ok(p));
        let wrong = RejoinOutcome::try_from(o).expect_err("not a rejoin");
        assert_eq!(
            wrong.to_string(),
            "the agent answered with a promote outcome, not Rejoin"
        );
        assert_eq!(CommandOutcome::from(()), CommandOutcome::Done);
    }

    #[test]
    fn names_are_the_wire_tags() {
        let outcomes = [
            CommandOutcome::Pong { agent_time_ms: 1 },
            CommandOutcome::Done,
            CommandOutcome::Repoint { timeline: 2 },
            CommandOutcome::Copy(CopiesOutcome::default()),
        ];
        for o in outcomes {
            let v = serde_json::to_value(&o).expect("encode");
            assert_eq!(v["command"], o.name(), "{o:?}");
        }
    }

    #[test]
    fn outcomes_survive_the_wire_with_field_names() {
        let o = CommandOutcome::Repoint { timeline: 3 };
        let bytes = rmp_serde::to_vec_named(&o).expect("encode");
        let back: CommandOutcome = rmp_serde::from_slice(&bytes).expect("decode");
        assert_eq!(back, o);
    }
}
