//! Admitting a failover, DR test or rejoin: one store transaction reads what runs,
//! applies [`rules::admission`], and records the new operation — so of two requests at
//! the same instant exactly one is admitted and the other is told which one runs.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use drmesh_protocol::api::{DrTest, DrTestStatus, FailoverRun};
use drmesh_protocol::RegionId;

use crate::error::Error;
use crate::rules::admission::{self, Operation, Running};
use crate::store::{Namespace, Store, StoreError, StoreExt, Txn};

/// The `meta` key of the running rejoin's claim.
const REJOIN_KEY: &str = "rejoin";

/// A rejoin's claim: it runs inside its HTTP request, until `until` at the latest.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RejoinClaim {
    id: String,
    region: RegionId,
    until: DateTime<Utc>,
}

/// Everything the store says is running, read inside the admitting transaction.
fn running(tx: &mut dyn Txn) -> Result<Vec<Running>, StoreError> {
    let mut out: Vec<Running> = tx
        .scan_json::<FailoverRun>(Namespace::Failovers, "")?
        .into_iter()
        .filter(|f| f.status.is_running())
        .map(|f| Running::Failover {
            id: f.failover_id,
            plan: f.plan_id,
        })
        .collect();
    out.extend(
        tx.scan_json::<DrTest>(Namespace::DrTests, "")?
            .into_iter()
            .filter(|t| t.status == DrTestStatus::InProgress)
            .map(|t| Running::DrTest {
                id: t.test_id,
                plan: t.plan_id,
            }),
    );
    if let Some(c) = tx.get_json::<RejoinClaim>(Namespace::Meta, REJOIN_KEY)? {
        out.push(Running::Rejoin {
            id: c.id,
            region: c.region,
            until: c.until,
        });
    }
    Ok(out)
}

/// Admits `op` at `now` and, in the same transaction, runs `record` (which writes the
/// operation's record). `Error::Conflict` names the running operation that excludes it.
pub fn admit(
    store: &dyn Store,
    op: &Operation,
    now: DateTime<Utc>,
    mut record: impl FnMut(&mut dyn Txn) -> Result<(), StoreError>,
) -> Result<(), Error> {
    store.atomically(|tx| {
        check(tx, op, now)?;
        record(tx)?;
        Ok(())
    })
}

/// [`admission::admit`] on what `tx` says is running: for a caller that records the
/// operation itself, in the same transaction.
pub fn check(tx: &mut dyn Txn, op: &Operation, now: DateTime<Utc>) -> Result<(), Error> {
    admission::admit(&running(tx)?, op, now).map_err(|c| Error::Conflict(c.0))
}

/// A rejoin's claim, held until dropped (or until its deadline, if the coordinator dies
/// first).
pub struct RejoinGuard<'a> {
    store: &'a dyn Store,
    id: String,
}

/// Claims the rejoin of `region` for at most `for_at_most`.
pub fn claim_rejoin<'a>(
    store: &'a dyn Store,
    region: &RegionId,
    now: DateTime<Utc>,
    for_at_most: std::time::Duration,
) -> Result<RejoinGuard<'a>, Error> {
    let claim = RejoinClaim {
        id: drmesh_protocol::ids::runbook_id("rejoin"),
        region: region.clone(),
        until: now + chrono::Duration::from_std(for_at_most).unwrap_or(chrono::Duration::hours(1)),
    };
    admit(
        store,
        &Operation::Rejoin {
            region: region.clone(),
        },
        now,
        |tx| tx.put_json(Namespace::Meta, REJOIN_KEY, &claim),
    )?;
    Ok(RejoinGuard {
        store,
        id: claim.id,
    })
}

impl Drop for RejoinGuard<'_> {
    fn drop(&mut self) {
        // Only our own claim goes: after its deadline another rejoin may hold the key.
        let released: Result<(), StoreError> = self.store.atomically(|tx| {
            if let Some(c) = tx.get_json::<RejoinClaim>(Namespace::Meta, REJOIN_KEY)? {
                if c.id == self.id {
                    tx.delete(Namespace::Meta, REJOIN_KEY)?;
                }
            }
            Ok(())
        });
        if let Err(e) = released {
            tracing::warn!(error = %e, rejoin = %self.id, "could not release the rejoin's claim; it lapses at its deadline");
        }
    }
}
