//! `drmesh plans`: disaster-recovery plans through the coordinator's REST API.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use drmesh_protocol::api::{AutomaticFailover, DrPlan};
use serde_json::json;

use crate::client::Client;
use crate::{print_json, Output};

const PLANS: &str = "/v1/backup-recovery/disaster-recovery/plans";

#[derive(Subcommand)]
pub enum PlansCmd {
    /// Create a plan from a JSON file (the runbook's body) or from the options.
    Create(PlanArgs),
    /// Replace a plan (same body or options as create).
    Update {
        id: String,
        #[command(flatten)]
        plan: PlanArgs,
    },
    /// Every plan.
    List {
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// One plan.
    Show {
        id: String,
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Delete a plan.
    Delete { id: String },
    /// Maintenance mode: pause the plan's automatic failover (health checks go on, a
    /// manual failover is still accepted).
    Pause {
        id: String,
        /// Why, for the status and the alerts.
        #[arg(long)]
        reason: Option<String>,
    },
    /// End maintenance mode: automatic failover armed again.
    Resume { id: String },
}

/// One line for a plan's automatic failover state.
pub fn describe_automatic(a: &AutomaticFailover) -> String {
    match a {
        AutomaticFailover::Off => "off (the plan fails over by hand only)".into(),
        AutomaticFailover::Armed => "armed".into(),
        AutomaticFailover::Paused { since, by } => {
            format!(
                "PAUSED (maintenance mode since {}, by {by})",
                since.to_rfc3339()
            )
        }
        AutomaticFailover::CoolingDown {
            until,
            after_failover,
        } => format!(
            "cooling down until {} (after failover {after_failover})",
            until.to_rfc3339()
        ),
    }
}

#[derive(Args)]
pub struct PlanArgs {
    /// The plan as JSON (`-` for stdin); the options below are then not allowed.
    #[arg(long, conflicts_with_all = ["id", "name", "rpo", "rto", "regions", "health_check_interval", "automatic", "channels", "test_interval"])]
    file: Option<PathBuf>,
    #[arg(long)]
    id: Option<String>,
    #[arg(long)]
    name: Option<String>,
    /// Recovery point objective, e.g. 1h.
    #[arg(long)]
    rpo: Option<String>,
    /// Recovery time objective, e.g. 4h.
    #[arg(long)]
    rto: Option<String>,
    /// Failover regions in order, comma-separated.
    #[arg(long, value_delimiter = ',')]
    regions: Vec<String>,
    /// Milliseconds between health checks (default 300000).
    #[arg(long)]
    health_check_interval: Option<u64>,
    /// Fail over by itself when the primary region is down.
    #[arg(long)]
    automatic: bool,
    /// Notification channels, comma-separated.
    #[arg(long, value_delimiter = ',')]
    channels: Vec<String>,
    /// Milliseconds between automatic DR tests (default 604800000).
    #[arg(long)]
    test_interval: Option<u64>,
}

impl PlanArgs {
    fn body(&self) -> anyhow::Result<serde_json::Value> {
        if let Some(file) = &self.file {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("read the plan from stdin")?
            } else {
                std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?
            };
            return serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()));
        }
        let mut body = json!({
            "name": self.name.clone().unwrap_or_default(),
            "rpo": self.rpo.clone().unwrap_or_default(),
            "rto": self.rto.clone().unwrap_or_default(),
            "failoverRegions": self.regions,
            "automaticFailover": self.automatic,
            "notificationChannels": self.channels,
        });
        if let Some(id) = &self.id {
            body["id"] = json!(id);
        }
        if let Some(ms) = self.health_check_interval {
            body["healthCheckInterval"] = json!(ms);
        }
        if let Some(ms) = self.test_interval {
            body["testInterval"] = json!(ms);
        }
        Ok(body)
    }
}

pub fn run(client: &Client, cmd: PlansCmd) -> anyhow::Result<()> {
    match cmd {
        PlansCmd::Create(args) => {
            let plan: DrPlan = client.post(PLANS, &args.body()?)?;
            println!("plan {} created", plan.id);
        }
        PlansCmd::Update { id, plan } => {
            let plan: DrPlan = client.put(&format!("{PLANS}/{id}"), &plan.body()?)?;
            println!("plan {} updated", plan.id);
        }
        PlansCmd::List { output } => {
            let body: serde_json::Value = client.get(PLANS)?;
            match output {
                Output::Json => print_json(&body)?,
                Output::Text => {
                    let plans: Vec<DrPlan> =
                        serde_json::from_value(body["plans"].clone()).context("read the plans")?;
                    if plans.is_empty() {
                        println!("no plans");
                    }
                    for p in &plans {
                        println!(
                            "{:<24} rpo {:<5} rto {:<5} {:<11} -> {}",
                            p.id,
                            p.rpo,
                            p.rto,
                            match (p.automatic_failover, p.maintenance.is_some()) {
                                (true, false) => "automatic",
                                (true, true) => "paused",
                                (false, _) => "manual",
                            },
                            p.failover_regions
                                .iter()
                                .map(|r| r.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    }
                }
            }
        }
        PlansCmd::Show { id, output } => {
            let plan: DrPlan = client.get(&format!("{PLANS}/{id}"))?;
            match output {
                Output::Json => print_json(&plan)?,
                Output::Text => print_plan(&plan),
            }
        }
        PlansCmd::Delete { id } => {
            client.delete(&format!("{PLANS}/{id}"))?;
            println!("plan {id} deleted");
        }
        PlansCmd::Pause { id, reason } => {
            let plan: DrPlan = client.post(
                &format!("{PLANS}/{id}/maintenance"),
                &json!({ "reason": reason }),
            )?;
            println!(
                "plan {} in maintenance mode: automatic failover paused{}",
                plan.id,
                if plan.automatic_failover {
                    ""
                } else {
                    " (the plan does not fail over by itself anyway)"
                }
            );
        }
        PlansCmd::Resume { id } => {
            client.delete(&format!("{PLANS}/{id}/maintenance"))?;
            println!("plan {id}: maintenance mode ended, automatic failover armed again");
        }
    }
    Ok(())
}

fn print_plan(p: &DrPlan) {
    println!("{}  {}  ({})", p.id, p.name, p.status);
    println!("  rpo / rto            {} / {}", p.rpo, p.rto);
    println!(
        "  failover regions     {}",
        p.failover_regions
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(" -> ")
    );
    println!(
        "  failover             {}",
        if p.automatic_failover {
            "automatic"
        } else {
            "manual only"
        }
    );
    if let Some(m) = &p.maintenance {
        println!(
            "  maintenance          since {} by {}{}",
            m.since.to_rfc3339(),
            m.by,
            m.reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
    println!(
        "  health checks every  {}",
        humantime::format_duration(std::time::Duration::from_millis(p.health_check_interval))
    );
    println!(
        "  DR tests every       {}",
        humantime::format_duration(std::time::Duration::from_millis(p.test_interval))
    );
    println!(
        "  notifications        {}",
        if p.notification_channels.is_empty() {
            "none".to_string()
        } else {
            p.notification_channels.join(", ")
        }
    );
    println!(
        "  created / updated    {} / {}",
        p.created_at.to_rfc3339(),
        p.updated_at.to_rfc3339()
    );
}
