//! End-to-end tests: real coordinator, agent and PostgreSQL processes.

#![allow(clippy::unwrap_used)]

mod e2e {
    pub mod archive;
    pub mod audit;
    pub mod backups_follow;
    pub mod certificates;
    pub mod cli;
    pub mod database;
    pub mod dns;
    pub mod documents;
    pub mod documents_status;
    pub mod drtest;
    pub mod failover;
    pub mod failover_checks;
    pub mod failover_store;
    pub mod faults;
    pub mod fencing;
    pub mod files;
    pub mod gc_crash;
    pub mod ha;
    pub mod http_api;
    pub mod https;
    pub mod liveness;
    pub mod netns;
    pub mod notify;
    pub mod object_lock;
    pub mod objstore_servers;
    pub mod pitr_retention;
    pub mod plans;
    pub mod quickstart;
    pub mod rejoin;
    pub mod replication;
    pub mod repo;
    pub mod retention;
    pub mod retention_months;
    pub mod route53;
    pub mod switchover;
    pub mod tokens;
    pub mod verification;
}
