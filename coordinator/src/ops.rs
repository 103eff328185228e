//! The drivers: each persists what it is about to do, then acts on what
//! [`crate::rules`] decided — sending commands to agents, probing databases, moving DNS,
//! recording and alerting. Long work runs in tasks with a span naming its id.
//!
//! - [`admission`]: one transaction admits a failover, DR test or rejoin and records it.
//! - [`failover`]: the runbook's seven steps as a durable state machine.
//! - [`health`]: each plan's primary checked, automatic failover started.
//! - [`probe`]: the coordinator's own `SELECT 1` and write check.
//! - [`rejoin`]: a fenced old primary made a standby of the new one.
//! - [`jobs`]: what backups, recoveries and verifications share (a capable agent, a
//!   command with progress folded into its record).
//! - [`database`], [`documents`]: backups of the database and the documents.
//! - [`recovery`]: point-in-time recovery into an environment.
//! - [`verification`]: database backup verifications and `verify-all`.
//! - [`drtest`]: DR tests, on demand and every `testInterval`.
//! - [`retention`]: the retention policies enforced on every agent, on a schedule.
//! - [`copies`]: copies of backups to the other locations, every interval.
//! - [`storage`]: the Storage Full alert.
//! - [`office`]: taking office (resuming what the last term left) and leaving it.
//! - [`quorum`]: a coordinator cut off from etcd tells every channel itself.
//! - [`audit`]: the audit log kept within `[audit]`.

pub mod admission;
pub mod audit;
pub mod copies;
pub mod database;
pub mod documents;
pub mod drtest;
pub mod failover;
pub mod health;
pub(crate) mod jobs;
pub mod office;
pub mod probe;
pub mod quorum;
pub mod recovery;
pub mod rejoin;
pub mod retention;
pub mod storage;
pub mod verification;
