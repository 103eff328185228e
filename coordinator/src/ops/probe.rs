//! The coordinator's own connections to the mesh's PostgreSQL servers: the health
//! check's `SELECT 1` (the DOWN rule's second witness) and failover step 5's check that
//! the new primary takes writes. Bounded in time; credentials from
//! `health_probe_conninfo`.

use std::time::Duration;

use crate::state::Coordinator;

/// `SELECT 1` on the PostgreSQL at `addr` with the configured credentials, bounded.
pub async fn select_one(
    coord: &Coordinator,
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> Result<(), String> {
    with_database(coord, addr, timeout, |client| async move {
        client.simple_query("select 1").await.map(|_| ())
    })
    .await
}

/// Failover step 5's check of the server at `addr`: out of recovery, and a write (to a
/// temporary table, which a server in recovery refuses) commits.
pub async fn check_writable(
    coord: &Coordinator,
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> Result<(), String> {
    let in_recovery = with_database(coord, addr, timeout, |client| async move {
        let row = client.query_one("select pg_is_in_recovery()", &[]).await?;
        let in_recovery: bool = row.try_get(0)?;
        if !in_recovery {
            client
                .batch_execute(
                    "begin; create temporary table drmesh_failover_check (at timestamptz); \
                     insert into drmesh_failover_check values (now()); commit",
                )
                .await?;
        }
        Ok(in_recovery)
    })
    .await?;
    if in_recovery {
        return Err(format!("{addr} is still in recovery"));
    }
    Ok(())
}

/// Connects to the PostgreSQL at `addr` with `health_probe_conninfo`'s credentials and
/// runs `f`, all within `timeout`.
async fn with_database<T, F, Fut>(
    coord: &Coordinator,
    addr: std::net::SocketAddr,
    timeout: Duration,
    f: F,
) -> Result<T, String>
where
    F: FnOnce(tokio_postgres::Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
{
    let mut cfg: tokio_postgres::Config = coord
        .config
        .health_probe_conninfo
        .parse()
        .map_err(|e| format!("health_probe_conninfo: {e}"))?;
    cfg.host(addr.ip().to_string())
        .port(addr.port())
        .connect_timeout(timeout)
        .application_name("drmesh-health-check");
    let attempt = async {
        let (client, connection) = cfg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(connection);
        let r = f(client).await.map_err(|e| e.to_string());
        conn.abort();
        r
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}
