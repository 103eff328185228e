//! Disaster-recovery plans: the runbook's `…/disaster-recovery/plans` body, checked field
//! by field, and kept in the store.
//!
//! A plan names the regions to fail over to, in order, the objectives (RPO, RTO) a
//! failover and a DR test are measured against, how often health checks and DR tests run,
//! whether failover may start by itself, and which notification channels hear of it.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use drmesh_protocol::api::{
    DrPlan, FieldError, Maintenance, PlanSpec, PLAN_ACTIVE, PLAN_MAINTENANCE,
};
use drmesh_protocol::ids::runbook_id;
use drmesh_protocol::RegionId;

use crate::error::Error;
use crate::store::{Namespace, Store, StoreError, StoreExt};

fn describe(fields: &[FieldError]) -> String {
    fields
        .iter()
        .map(|f| format!("{}: {}", f.field, f.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `healthCheckInterval` when the body leaves it out (the runbook's: 5 minutes).
pub const DEFAULT_HEALTH_CHECK_INTERVAL_MS: u64 = 300_000;
/// Allowed `healthCheckInterval`: one second to one day.
pub const HEALTH_CHECK_INTERVAL_MS: std::ops::RangeInclusive<u64> = 1_000..=86_400_000;
/// `testInterval` when the body leaves it out (the runbook's: a week).
pub const DEFAULT_TEST_INTERVAL_MS: u64 = 604_800_000;
/// Allowed `testInterval`: one hour to 366 days.
pub const TEST_INTERVAL_MS: std::ops::RangeInclusive<u64> = 3_600_000..=31_622_400_000;
/// The longest RPO or RTO taken (a year); anything longer is a typo.
const MAX_OBJECTIVE_SECS: u64 = 366 * 24 * 3600;

/// What a plan is checked against: the regions the mesh knows and the channels the
/// coordinator is configured with.
pub struct Known {
    pub regions: HashSet<RegionId>,
    pub channels: HashSet<String>,
}

/// Checks every field of `spec` (all problems at once, each naming its field) and makes
/// the plan; `id` is the plan's id when it is being replaced.
pub fn check(spec: PlanSpec, known: &Known, id: Option<&str>) -> Result<DrPlan, Error> {
    let mut bad = Vec::new();
    let mut fail = |field: &str, message: String| {
        bad.push(FieldError {
            field: field.to_string(),
            message,
        })
    };
    let id = match (id, spec.id) {
        (Some(path), Some(body)) if path != body => {
            fail(
                "id",
                format!("{body:?} differs from the plan being replaced, {path:?}"),
            );
            path.to_string()
        }
        (Some(path), _) => path.to_string(),
        (None, Some(body)) => {
            if !valid_id(&body) {
                fail(
                    "id",
                    format!("{body:?} must be 1-64 letters, digits, '_' or '-'"),
                );
            }
            body
        }
        (None, None) => runbook_id("plan"),
    };
    let name = spec.name.trim().to_string();
    if name.is_empty() {
        fail("name", "is required".into());
    } else if name.len() > 200 {
        fail("name", "must be at most 200 characters".into());
    }
    let mut objective = |field: &str, text: &str| -> u64 {
        if text.trim().is_empty() {
            fail(field, "is required: a duration such as 1h or 15m".into());
            return 0;
        }
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d.as_secs() == 0 => {
                fail(field, format!("{text:?} must be at least one second"));
                0
            }
            Ok(d) if d.as_secs() > MAX_OBJECTIVE_SECS => {
                fail(field, format!("{text:?} is longer than a year"));
                0
            }
            Ok(d) => d.as_secs(),
            Err(e) => {
                fail(
                    field,
                    format!("{text:?} is not a duration such as 1h or 15m: {e}"),
                );
                0
            }
        }
    };
    let rpo_seconds = objective("rpo", &spec.rpo);
    let rto_seconds = objective("rto", &spec.rto);
    if spec.failover_regions.is_empty() {
        fail(
            "failoverRegions",
            "needs at least one region to fail over to".into(),
        );
    }
    let mut seen = HashSet::new();
    for (i, region) in spec.failover_regions.iter().enumerate() {
        let field = format!("failoverRegions[{i}]");
        if !seen.insert(region) {
            fail(&field, format!("{region} is listed twice"));
        } else if !known.regions.contains(region) {
            let mut regions: Vec<&str> = known.regions.iter().map(|r| r.as_str()).collect();
            regions.sort_unstable();
            fail(
                &field,
                format!(
                    "unknown region {region} (known: {})",
                    if regions.is_empty() {
                        "none yet".to_string()
                    } else {
                        regions.join(", ")
                    }
                ),
            );
        }
    }
    let health_check_interval = spec
        .health_check_interval
        .unwrap_or(DEFAULT_HEALTH_CHECK_INTERVAL_MS);
    if !HEALTH_CHECK_INTERVAL_MS.contains(&health_check_interval) {
        fail(
            "healthCheckInterval",
            format!(
                "{health_check_interval} ms is outside {}..={} ms (1 s to 1 day)",
                HEALTH_CHECK_INTERVAL_MS.start(),
                HEALTH_CHECK_INTERVAL_MS.end()
            ),
        );
    }
    let test_interval = spec.test_interval.unwrap_or(DEFAULT_TEST_INTERVAL_MS);
    if !TEST_INTERVAL_MS.contains(&test_interval) {
        fail(
            "testInterval",
            format!(
                "{test_interval} ms is outside {}..={} ms (1 hour to 366 days)",
                TEST_INTERVAL_MS.start(),
                TEST_INTERVAL_MS.end()
            ),
        );
    }
    let mut seen = HashSet::new();
    for (i, channel) in spec.notification_channels.iter().enumerate() {
        let field = format!("notificationChannels[{i}]");
        if !seen.insert(channel) {
            fail(&field, format!("{channel} is listed twice"));
        } else if !known.channels.contains(channel) {
            let mut channels: Vec<&str> = known.channels.iter().map(String::as_str).collect();
            channels.sort_unstable();
            fail(
                &field,
                format!(
                    "unknown notification channel {channel:?} (configured in [notify.NAME] of coordinator.toml: {})",
                    if channels.is_empty() {
                        "none".to_string()
                    } else {
                        channels.join(", ")
                    }
                ),
            );
        }
    }
    if let Some(r) = &spec.retention {
        if let Err(e) = r.validate() {
            fail("retention", e.to_string());
        }
    }
    if !bad.is_empty() {
        return Err(Error::Invalid {
            message: format!("invalid plan: {}", describe(&bad)),
            fields: bad,
        });
    }
    let now = Utc::now();
    Ok(DrPlan {
        id,
        name,
        rpo: spec.rpo.trim().to_string(),
        rto: spec.rto.trim().to_string(),
        rpo_seconds,
        rto_seconds,
        failover_regions: spec.failover_regions,
        health_check_interval,
        automatic_failover: spec.automatic_failover,
        auto_rejoin: spec.auto_rejoin,
        notification_channels: spec.notification_channels,
        test_interval,
        retention: spec.retention,
        active_region: None,
        home_region: None,
        status: PLAN_ACTIVE.into(),
        maintenance: None,
        created_at: now,
        updated_at: now,
    })
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Regions as a comma-separated list, for messages.
pub fn region_list(regions: &[RegionId]) -> String {
    regions
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn get(store: &dyn Store, id: &str) -> Result<Option<DrPlan>, StoreError> {
    if !valid_id(id) {
        return Ok(None);
    }
    store.get_json(Namespace::Plans, id)
}

/// Every plan, by id.
pub fn list(store: &dyn Store) -> Result<Vec<DrPlan>, StoreError> {
    store.scan_json(Namespace::Plans, "")
}

/// Stores a new plan; 409 when its id is taken (checked in the transaction that writes).
pub fn create(store: &dyn Store, plan: &DrPlan) -> Result<(), Error> {
    store.atomically(|tx| {
        if tx.get(Namespace::Plans, &plan.id)?.is_some() {
            return Err(Error::Conflict(format!(
                "plan {} exists; PUT …/plans/{} replaces it",
                plan.id, plan.id
            )));
        }
        Ok(tx.put_json(Namespace::Plans, &plan.id, plan)?)
    })
}

/// Changes plan `id` with `change` in one transaction (read, change, write), so two
/// changes at once never lose one another; 404 when there is no such plan. Returns the
/// plan as stored.
pub fn update(
    store: &dyn Store,
    id: &str,
    mut change: impl FnMut(&mut DrPlan) -> Result<(), Error>,
) -> Result<DrPlan, Error> {
    if !valid_id(id) {
        return Err(Error::NotFound(format!("no plan {id}")));
    }
    store.atomically(|tx| {
        let mut plan: DrPlan = tx
            .get_json(Namespace::Plans, id)?
            .ok_or_else(|| Error::NotFound(format!("no plan {id}")))?;
        change(&mut plan)?;
        tx.put_json(Namespace::Plans, id, &plan)?;
        Ok(plan)
    })
}

/// Replaces plan `plan.id`'s specification, keeping what is not in it: when it was
/// created, its active region and its maintenance mode.
pub fn replace(store: &dyn Store, plan: DrPlan) -> Result<DrPlan, Error> {
    let id = plan.id.clone();
    update(store, &id, |old| {
        let mut new = plan.clone();
        new.created_at = old.created_at;
        new.active_region = old.active_region.clone();
        new.home_region = old.home_region.clone();
        new.status = old.status.clone();
        new.maintenance = old.maintenance.clone();
        *old = new;
        Ok(())
    })
}

/// Maintenance mode on: automatic failover of the plan paused (health checks go on; a
/// manual failover is still accepted). Pausing a paused plan keeps who paused it first.
pub fn pause(
    store: &dyn Store,
    id: &str,
    by: &str,
    reason: Option<String>,
    now: DateTime<Utc>,
) -> Result<DrPlan, Error> {
    update(store, id, |p| {
        if p.maintenance.is_none() {
            p.maintenance = Some(Maintenance {
                since: now,
                by: by.to_string(),
                reason: reason.clone(),
            });
            p.status = PLAN_MAINTENANCE.into();
            p.updated_at = now;
        }
        Ok(())
    })
}

/// Maintenance mode off: automatic failover armed again (if the plan enables it).
pub fn resume(store: &dyn Store, id: &str, now: DateTime<Utc>) -> Result<DrPlan, Error> {
    update(store, id, |p| {
        if p.maintenance.take().is_some() {
            p.status = PLAN_ACTIVE.into();
            p.updated_at = now;
        }
        Ok(())
    })
}

pub fn delete(store: &dyn Store, id: &str) -> Result<(), Error> {
    if get(store, id)?.is_none() || !store.delete(Namespace::Plans, id)? {
        return Err(Error::NotFound(format!("no plan {id}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Known {
        Known {
            regions: ["us-west-2", "us-east-1", "eu-west-1"]
                .iter()
                .map(|r| r.parse().expect("region"))
                .collect(),
            channels: ["slack", "email"].iter().map(|c| c.to_string()).collect(),
        }
    }

    fn runbook_body() -> PlanSpec {
        serde_json::from_str(
            r#"{
                "id": "production_dr_plan",
                "name": "Production Disaster Recovery Plan",
                "rpo": "1h",
                "rto": "4h",
                "failoverRegions": ["us-east-1", "eu-west-1"],
                "healthCheckInterval": 300000,
                "automaticFailover": false,
                "notificationChannels": ["slack", "email"],
                "testInterval": 604800000
            }"#,
        )
        .expect("the runbook's body parses")
    }

    #[test]
    fn the_runbook_plan_is_accepted() {
        let known = known();
        let plan = check(runbook_body(), &known, None).expect("valid");
        assert_eq!(plan.id, "production_dr_plan");
        assert_eq!((plan.rpo_seconds, plan.rto_seconds), (3600, 4 * 3600));
        assert_eq!(plan.failover_regions.len(), 2);
        assert_eq!(plan.status, "ACTIVE");
    }

    #[test]
    fn a_plan_may_carry_its_own_retention_policies() {
        let known = known();
        let mut body = serde_json::to_value(runbook_body()).expect("json");
        body["retention"] = serde_json::json!({"database": {"full": "90d", "weekly": 8}});
        let spec: PlanSpec = serde_json::from_value(body.clone()).expect("parses");
        let plan = check(spec, &known, None).expect("valid");
        let r = plan.retention.expect("kept");
        let given = r.apply(&drmesh_protocol::retention::RetentionPolicies::default());
        assert_eq!(
            given.database.full,
            std::time::Duration::from_secs(90 * 86400)
        );
        assert_eq!(given.database.weekly, 8);
        assert_eq!(
            given.documents,
            Default::default(),
            "documents: the coordinator's"
        );
        body["retention"] = serde_json::json!({"database": {"full": "1d", "incremental": "2d"}});
        let spec: PlanSpec = serde_json::from_value(body.clone()).expect("parses");
        let Err(Error::Invalid { fields, .. }) = check(spec, &known, None) else {
            panic!("refused");
        };
        assert_eq!(fields[0].field, "retention", "{fields:?}");
        body["retention"] = serde_json::json!({"logs": {}});
        assert!(
            serde_json::from_value::<PlanSpec>(body).is_err(),
            "unknown kind"
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let known = known();
        let mut spec = runbook_body();
        spec.rpo = "an hour".into();
        spec.rto = String::new();
        spec.failover_regions = vec![
            "us-east-1".parse().expect("region"),
            "mars-1".parse().expect("region"),
            "us-east-1".parse().expect("region"),
        ];
        spec.health_check_interval = Some(10);
        spec.test_interval = Some(1);
        spec.notification_channels = vec!["pager".into()];
        let Err(Error::Invalid { fields, .. }) = check(spec, &known, None) else {
            panic!("refused");
        };
        let named: Vec<&str> = fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            named,
            [
                "rpo",
                "rto",
                "failoverRegions[1]",
                "failoverRegions[2]",
                "healthCheckInterval",
                "testInterval",
                "notificationChannels[0]"
            ]
        );
        assert!(fields[2].message.contains("mars-1"), "{:?}", fields[2]);
        assert!(fields[3].message.contains("twice"), "{:?}", fields[3]);

        let mut spec = runbook_body();
        spec.failover_regions.clear();
        spec.id = Some("../etc".into());
        let Err(Error::Invalid { fields, .. }) = check(spec, &known, None) else {
            panic!("refused");
        };
        let named: Vec<&str> = fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(named, ["id", "failoverRegions"]);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<PlanSpec>(r#"{"name": "x", "rpoo": "1h"}"#)
            .expect_err("unknown field");
        assert!(err.to_string().contains("rpoo"), "{err}");
    }

    #[test]
    fn a_replacement_keeps_its_id() {
        let known = known();
        let mut spec = runbook_body();
        spec.id = None;
        let plan = check(spec, &known, Some("production_dr_plan")).expect("valid");
        assert_eq!(plan.id, "production_dr_plan");
        let Err(Error::Invalid { fields, .. }) = check(runbook_body(), &known, Some("other_plan"))
        else {
            panic!("refused");
        };
        assert_eq!(fields[0].field, "id");
    }
}
