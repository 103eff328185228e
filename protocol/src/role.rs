//! The role of a PostgreSQL server, as its agent sees it: in heartbeats, statuses and
//! REST bodies alike.

use serde::{Deserialize, Serialize};

/// Role of the PostgreSQL cluster next to an agent, as the agent sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PgRole {
    /// Accepts writes (`pg_is_in_recovery()` is false).
    Primary,
    /// In recovery, streaming or restoring WAL.
    Standby,
    /// Configured but not answering.
    Unreachable,
}

impl std::fmt::Display for PgRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PgRole::Primary => "primary",
            PgRole::Standby => "standby",
            PgRole::Unreachable => "unreachable",
        })
    }
}
