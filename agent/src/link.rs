//! The agent's QUIC link to the coordinator: connect with mutual TLS, say hello, send a
//! heartbeat datagram every interval, answer commands on bidirectional streams, and
//! reconnect with capped exponential backoff when anything goes wrong.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use drmesh_protocol::capability;
use drmesh_protocol::codec::{encode, Frame};
use drmesh_protocol::outcome::CommandOutcome;
use drmesh_protocol::{
    close_code, error_code, AgentMessage, AgentMessageV1, Command, CommandKind, CommandResult,
    CoordinatorMessage, CoordinatorMessageV1, DecodeError, ErrorMessage, FrameDecoder, Heartbeat,
    Hello, Progress as ProgressMessage, Welcome,
};
use parking_lot::Mutex;
use quinn::crypto::rustls::QuicClientConfig;
use rand::Rng;
use tracing::{debug, info, warn, Instrument};

use crate::config::AgentConfig;
use crate::documents::Documents;
use crate::epoch::Epochs;
use crate::mesh::Mesh;
use crate::postgres::Prober;
use crate::progress::ProgressFn;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("fencing epoch: {0}")]
    Epoch(#[from] crate::epoch::EpochError),
    #[error("TLS: {0}")]
    Tls(#[from] drmesh_protocol::tls::TlsError),
    #[error("QUIC TLS config: {0}")]
    QuicTls(String),
    #[error("resolve coordinator {addr}: {source}")]
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    #[error("bind local UDP socket: {0}")]
    Bind(std::io::Error),
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    #[error("bad frame from coordinator: {0}")]
    Decode(#[from] DecodeError),
    #[error("encode frame: {0}")]
    Encode(#[from] drmesh_protocol::EncodeError),
    #[error("coordinator refused us: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("coordinator closed the stream before answering")]
    EndOfStream,
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("unexpected message: {0}")]
    Unexpected(String),
    #[error("send heartbeat: {0}")]
    Datagram(#[from] quinn::SendDatagramError),
}

pub use crate::observed::Observed;

/// The next delay after a failed attempt: doubling from 100 ms up to `max`, with ±20%
/// jitter so a coordinator restart is not met by every agent at the same instant.
pub fn next_backoff(current: Duration, max: Duration) -> Duration {
    let doubled = (current * 2).clamp(Duration::from_millis(100), max);
    let jitter = rand::thread_rng().gen_range(0.8..1.2);
    doubled.mul_f64(jitter).min(max)
}

pub struct Link {
    config: AgentConfig,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    commands: Arc<CommandContext>,
    mesh: Arc<Mesh>,
    /// Where peers reach this agent's mesh socket.
    mesh_addr: SocketAddr,
    /// Which coordinator to try: a leader a follower named, else the next of
    /// `coordinators` after one that failed.
    target: Mutex<Target>,
}

#[derive(Default)]
struct Target {
    /// The leader a follower named (tried once, next).
    leader: Option<String>,
    /// The index in `coordinators` tried when no leader is named.
    index: usize,
    /// The last coordinator that could not be reached, and when: a follower still
    /// names a dead leader until its lease runs out, and it is not tried again then.
    unreachable: Option<(String, Instant)>,
}

impl Target {
    /// Whether `addr` failed to answer within the last `within`.
    fn recently_unreachable(&self, addr: &str, within: Duration) -> bool {
        self.unreachable
            .as_ref()
            .is_some_and(|(a, at)| a == addr && at.elapsed() < within)
    }
}

/// Why a connection that was up ended.
struct Ended {
    reason: String,
    /// The coordinator stopped answering (rather than closing the connection).
    silent: bool,
}

impl Ended {
    fn closed(reason: String) -> Self {
        Self {
            reason,
            silent: false,
        }
    }
}

/// Heartbeats waiting for their acknowledgement: sequence number and send time.
type Unacked = Arc<Mutex<VecDeque<(u64, Instant)>>>;

/// How long a QUIC handshake may take when there are other coordinators to try.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a coordinator that did not answer is not tried again on a follower's word.
const UNREACHABLE_FOR: Duration = Duration::from_secs(10);

/// With several coordinators, a link whose oldest unacknowledged heartbeat is this many
/// intervals old (and at least [`SILENT_MIN`]) is given up: a coordinator killed outright
/// sends no close, and QUIC's idle timeout is far longer than a leader change.
const SILENT_INTERVALS: u32 = 5;
const SILENT_MIN: Duration = Duration::from_secs(1);

/// The longest pause between rounds over several coordinators.
const SEVERAL_MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How many heartbeats wait for an acknowledgement at most.
const UNACKED: usize = 64;

/// What commands run against; outlives any one connection, so work started before a
/// reconnect goes on.
pub struct CommandContext {
    /// The highest fencing epoch seen, and its failover (kept in `<data_dir>/epoch-<id>.json`).
    pub epochs: Arc<Epochs>,
    pub observed: Arc<Observed>,
    pub documents: Option<Arc<Documents>>,
    /// `[database]`, and the configuration file its backup processes are given.
    pub database: Option<(crate::config::DatabaseConfig, std::path::PathBuf)>,
    /// `[postgres]`: the server this agent promotes.
    pub postgres: Option<crate::config::PostgresConfig>,
    /// The agent's own directory (verifications' throw-away directories go below it).
    pub data_dir: std::path::PathBuf,
    /// `[archive]`: where enforcing retention moves the monthly and yearly picks.
    pub archive: Option<crate::config::ArchiveConfig>,
}

async fn read_frame<M: Frame>(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<Option<M>, LinkError> {
    // On the heap: a buffer inside the future would be kept for the whole connection.
    let mut buf = vec![0u8; 8192];
    loop {
        if let Some(msg) = decoder.next_frame::<M>()? {
            return Ok(Some(msg));
        }
        match recv.read(&mut buf).await? {
            Some(n) => decoder.push(&buf[..n]),
            None => {
                decoder.finish()?;
                return Ok(None);
            }
        }
    }
}

async fn write_frame(send: &mut quinn::SendStream, msg: &AgentMessage) -> Result<(), LinkError> {
    send.write_all(&encode(msg)?).await?;
    Ok(())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn disk_free(path: &std::path::Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// The agent's repositories on local paths, by name (`database`, or the document
/// location's): a location's date template (`{yyyy}`) is cut off at the directory
/// before it.
fn local_repositories(config: &AgentConfig) -> Vec<(String, std::path::PathBuf)> {
    let local = |url: &str| {
        let url = url.strip_prefix("file://").unwrap_or(url);
        let url = url.split('{').next().unwrap_or(url);
        url.starts_with('/').then(|| std::path::PathBuf::from(url))
    };
    let mut out = Vec::new();
    if let Some(db) = &config.database {
        if let Some(p) = local(&db.repository) {
            out.push(("database".to_string(), p));
        }
    }
    if let Some(docs) = &config.documents {
        for l in &docs.locations {
            if let Some(p) = local(&l.url) {
                out.push((l.name.clone(), p));
            }
        }
    }
    out
}

/// Free and total bytes of the filesystem each local repository is on (or will be: the
/// nearest directory above it that exists).
fn storage_usage(repos: &[(String, std::path::PathBuf)]) -> Vec<drmesh_protocol::StorageUsage> {
    repos
        .iter()
        .filter_map(|(name, path)| {
            let st = path
                .ancestors()
                .find_map(|p| nix::sys::statvfs::statvfs(p).ok())?;
            let block = st.fragment_size();
            Some(drmesh_protocol::StorageUsage {
                name: name.clone(),
                free_bytes: st.blocks_available().saturating_mul(block),
                total_bytes: st.blocks().saturating_mul(block),
            })
        })
        .collect()
}

impl Link {
    pub fn new(
        config: AgentConfig,
        observed: Arc<Observed>,
        mesh: Arc<Mesh>,
        mesh_addr: SocketAddr,
    ) -> Result<Self, LinkError> {
        let tls = drmesh_protocol::tls::client_config(&config.tls)?;
        let crypto =
            QuicClientConfig::try_from(tls).map_err(|e| LinkError::QuicTls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        let idle = (config.heartbeat_interval * 20).max(Duration::from_secs(10));
        transport.max_idle_timeout(idle.try_into().ok());
        transport.keep_alive_interval(Some(config.heartbeat_interval.max(Duration::from_secs(1))));
        client.transport_config(Arc::new(transport));
        let bind: std::net::SocketAddr = if config
            .coordinator_addr()
            .map(|a| a.is_ipv6())
            .unwrap_or(false)
        {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(LinkError::Bind)?;
        let documents = config
            .documents
            .clone()
            .map(|d| Arc::new(Documents::new(d)));
        let database = config.database.clone().zip(config.path.clone());
        let postgres = config.postgres.clone();
        let data_dir = config.data_dir.clone();
        let archive = config.archive.clone();
        let epochs = Arc::new(Epochs::load(
            &data_dir.join(format!("epoch-{}.json", config.id)),
        )?);
        Ok(Self {
            config,
            endpoint,
            client,
            commands: Arc::new(CommandContext {
                epochs,
                observed,
                documents,
                database,
                postgres,
                data_dir,
                archive,
            }),
            mesh,
            mesh_addr,
            target: Mutex::new(Target::default()),
        })
    }

    /// Keeps the link up forever: connect, run, back off, again. With several
    /// coordinators, a follower's answer names the leader, tried at once; a coordinator
    /// that fails is followed by the next, with a fresh backoff once the list wraps.
    pub async fn run(self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let target = self.next_target();
            match self.session(&target).await {
                Ok(Ended { reason, silent }) => {
                    info!(%reason, "link closed");
                    backoff = Duration::from_millis(100);
                    // The leader may have changed: go on to the next of the list.
                    let mut t = self.target.lock();
                    t.index += 1;
                    if silent {
                        t.unreachable = Some((target.clone(), Instant::now()));
                    }
                    drop(t);
                }
                Err(LinkError::Refused { code, message }) if is_not_leader(&code) => {
                    let known = {
                        let mut t = self.target.lock();
                        // A leader that just failed to answer is dead, not yet replaced.
                        let leader = leader_named(&message)
                            .filter(|l| !t.recently_unreachable(l, UNREACHABLE_FOR));
                        debug!(coordinator = %target, leader = ?leader, "not the leader");
                        let known = leader.is_some();
                        t.leader = leader;
                        if !known {
                            t.index += 1;
                        }
                        known
                    };
                    // A named leader at once; no leader known yet: a short pause.
                    tokio::time::sleep(if known {
                        Duration::ZERO
                    } else {
                        Duration::from_millis(200)
                    })
                    .await;
                    continue;
                }
                Err(e) => {
                    warn!(coordinator = %target, error = %e, retry_in_ms = backoff.as_millis() as u64, "link failed");
                    let more = {
                        let mut t = self.target.lock();
                        t.index += 1;
                        if matches!(
                            e,
                            LinkError::Timeout(_)
                                | LinkError::Connection(_)
                                | LinkError::Connect(_)
                        ) {
                            t.unreachable = Some((target.clone(), Instant::now()));
                        }
                        let n = self.config.coordinators.len();
                        n > 1 && !t.index.is_multiple_of(n)
                    };
                    if more {
                        // More coordinators to try before backing off.
                        continue;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            // With several coordinators a whole round has failed: one of them will lead
            // again within a lease, so the pause stays short.
            let cap = if self.config.coordinators.len() > 1 {
                self.config.reconnect_max_backoff.min(SEVERAL_MAX_BACKOFF)
            } else {
                self.config.reconnect_max_backoff
            };
            backoff = next_backoff(backoff, cap);
        }
    }

    fn next_target(&self) -> String {
        let mut t = self.target.lock();
        if let Some(l) = t.leader.take() {
            return l;
        }
        let list = &self.config.coordinators;
        if list.is_empty() {
            return self.config.coordinator.clone();
        }
        list[t.index % list.len()].clone()
    }

    /// One connection, from handshake to close. `Ok` carries why a healthy link ended.
    async fn session(&self, target: &str) -> Result<Ended, LinkError> {
        let addr = crate::config::resolve(target).map_err(|source| LinkError::Resolve {
            addr: target.to_string(),
            source,
        })?;
        let connecting =
            self.endpoint
                .connect_with(self.client.clone(), addr, &self.config.coordinator_name)?;
        let conn = if self.config.coordinators.len() > 1 {
            // Bounded: a dead coordinator answers nothing, and the next one should be
            // tried well within the lease.
            tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
                .await
                .map_err(|_| LinkError::Timeout("handshake"))??
        } else {
            connecting.await?
        };
        let (mut send, mut recv) = conn.open_bi().await?;
        let hello = AgentMessage::V1(AgentMessageV1::Hello(Hello {
            agent_id: self.config.id.clone(),
            region: self.config.region.clone(),
            version: drmesh_protocol::VERSION.to_string(),
            capabilities: self.capabilities(),
            mesh_addr: Some(self.mesh_addr),
            postgres_addr: self.config.postgres.as_ref().and_then(|p| p.advertise),
            postgres_mesh_addr: self.config.postgres_mesh_addr(),
        }));
        write_frame(&mut send, &hello).await?;
        let mut decoder = FrameDecoder::new();
        let welcome = tokio::time::timeout(
            Duration::from_secs(10),
            read_frame::<CoordinatorMessage>(&mut recv, &mut decoder),
        )
        .await
        .map_err(|_| LinkError::Timeout("welcome"))?;
        let welcome: Welcome = match welcome {
            Ok(Some(CoordinatorMessage::V1(CoordinatorMessageV1::Welcome(w)))) => w,
            Ok(Some(CoordinatorMessage::V1(CoordinatorMessageV1::Error(e)))) => {
                return Err(LinkError::Refused {
                    code: e.code,
                    message: e.message,
                })
            }
            Ok(Some(other)) => return Err(LinkError::Unexpected(format!("{other:?}"))),
            Ok(None) => return Err(EndOfStreamOrClose::reason(&conn)),
            Err(LinkError::Read(_)) => return Err(EndOfStreamOrClose::reason(&conn)),
            Err(e) => return Err(e),
        };
        self.commands.epochs.observe(welcome.epoch);
        if let Some(view) = welcome.mesh {
            self.mesh.set_view(view);
        }
        info!(coordinator = %addr, epoch = %welcome.epoch, "connected to coordinator");

        let unacked: Unacked = Arc::default();
        let commands =
            tokio::spawn(serve_commands(conn.clone(), self.commands.clone()).in_current_span());
        let acks = tokio::spawn(
            receive_acks(
                conn.clone(),
                unacked.clone(),
                self.mesh.clone(),
                self.commands.epochs.clone(),
            )
            .in_current_span(),
        );
        let ended = self.heartbeat_loop(&conn, &unacked).await;
        commands.abort();
        acks.abort();
        conn.close(close_code::NORMAL.into(), b"agent link restarting");
        Ok(ended)
    }

    fn capabilities(&self) -> Vec<String> {
        let mut caps = vec!["heartbeat".to_string(), "commands".to_string()];
        if self.config.postgres.is_some() {
            caps.push(capability::POSTGRES.into());
        }
        if self.config.documents.is_some() {
            caps.push(capability::DOCUMENTS.into());
        }
        // Each repository it backs up into, so the coordinator sends retention and
        // replication work for a shared one to one agent only.
        // A local path names a repository on this host only.
        let host = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default();
        let repository = |url: &str| {
            if url.contains("://") && !url.starts_with("file://") {
                format!("repository:{url}")
            } else {
                format!("repository:{host}:{url}")
            }
        };
        if let Some(db) = &self.config.database {
            caps.push(repository(&db.repository));
        }
        if let Some(docs) = &self.config.documents {
            caps.extend(docs.locations.iter().map(|l| repository(&l.url)));
        }
        if let Some(db) = &self.config.database {
            caps.push(capability::DATABASE.into());
            for name in db.environments.keys() {
                caps.push(format!("environment:{name}"));
            }
        }
        caps
    }

    async fn heartbeat_loop(&self, conn: &quinn::Connection, unacked: &Unacked) -> Ended {
        let mut ticker = tokio::time::interval(self.config.heartbeat_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0u64;
        let repositories = local_repositories(&self.config);
        let silent_limit = (self.config.heartbeat_interval * SILENT_INTERVALS).max(SILENT_MIN);
        let several = self.config.coordinators.len() > 1;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                e = conn.closed() => return Ended::closed(e.to_string()),
            }
            let oldest = unacked.lock().front().map(|(_, at)| at.elapsed());
            if several && oldest.is_some_and(|age| age >= silent_limit) {
                return Ended {
                    reason: format!(
                        "no heartbeat acknowledged for {} ms: trying the other coordinators",
                        silent_limit.as_millis()
                    ),
                    silent: true,
                };
            }
            seq += 1;
            let hb = AgentMessage::V1(AgentMessageV1::Heartbeat(Heartbeat {
                seq,
                sent_at_ms: unix_ms(),
                postgres: self.commands.observed.postgres.lock().clone(),
                disk_free_bytes: disk_free(&self.config.data_dir),
                last_backup_ids: self.commands.observed.last_backup_ids.lock().clone(),
                mesh: Some(self.mesh.report()),
                storage: storage_usage(&repositories),
            }));
            let bytes = match encode(&hb) {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "encode heartbeat");
                    continue;
                }
            };
            {
                let mut u = unacked.lock();
                if u.len() >= UNACKED {
                    u.pop_front();
                }
                u.push_back((seq, Instant::now()));
            }
            if let Err(e) = conn.send_datagram(bytes.into()) {
                return Ended::closed(format!("send heartbeat: {e}"));
            }
        }
    }
}

/// Reads the coordinator's heartbeat acknowledgements: each renews the lease as of its
/// heartbeat's send time, and may carry a new mesh view.
async fn receive_acks(
    conn: quinn::Connection,
    unacked: Unacked,
    mesh: Arc<Mesh>,
    epochs: Arc<Epochs>,
) {
    loop {
        let Ok(datagram) = conn.read_datagram().await else {
            return;
        };
        match drmesh_protocol::codec::decode_exact::<CoordinatorMessage>(&datagram) {
            Ok(CoordinatorMessage::V1(CoordinatorMessageV1::HeartbeatAck(ack))) => {
                let sent = {
                    let mut u = unacked.lock();
                    let sent = u.iter().find(|(s, _)| *s == ack.seq).map(|(_, t)| *t);
                    // Older heartbeats can no longer renew anything newer.
                    u.retain(|(s, _)| *s > ack.seq);
                    sent
                };
                if let Some(sent) = sent {
                    mesh.renewed_by_coordinator(sent);
                }
                epochs.observe(ack.epoch);
                if let Some(view) = ack.mesh {
                    mesh.set_view(view);
                }
            }
            Ok(other) => debug!(message = ?other, "unexpected datagram from the coordinator"),
            Err(e) => warn!(error = %e, "undecodable datagram from the coordinator"),
        }
    }
}

/// Whether a refusal says the coordinator does not lead (an error frame's code, or the
/// close code).
fn is_not_leader(code: &str) -> bool {
    code == drmesh_protocol::error_code::NOT_LEADER
        || code == drmesh_protocol::close_code::NOT_LEADER.to_string()
}

/// The leader's QUIC address a follower named: `leader=HOST:PORT` (a close reason) or
/// `… the leader is at HOST:PORT` (an error frame).
fn leader_named(message: &str) -> Option<String> {
    let named = message
        .strip_prefix("leader=")
        .or_else(|| message.rsplit_once("the leader is at ").map(|(_, l)| l))?
        .trim();
    (!named.is_empty()).then(|| named.to_string())
}

/// Names the reason the coordinator gave when it closed the connection.
struct EndOfStreamOrClose;

impl EndOfStreamOrClose {
    fn reason(conn: &quinn::Connection) -> LinkError {
        match conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(close)) => LinkError::Refused {
                code: close.error_code.to_string(),
                message: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            Some(other) => LinkError::Connection(other),
            None => LinkError::EndOfStream,
        }
    }
}

async fn serve_commands(conn: quinn::Connection, ctx: Arc<CommandContext>) {
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "command streams ended");
                return;
            }
        };
        tokio::spawn(handle_command(send, recv, ctx.clone()).in_current_span());
    }
}

async fn handle_command(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    ctx: Arc<CommandContext>,
) {
    let mut decoder = FrameDecoder::new();
    let reply = match read_frame::<CoordinatorMessage>(&mut recv, &mut decoder).await {
        Ok(Some(CoordinatorMessage::V1(CoordinatorMessageV1::Command(cmd)))) => {
            // Progress goes out while the command runs; a lost stream does not stop
            // the work, only its reports.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<ProgressMessage>(16);
            let work = execute(cmd, &ctx, tx);
            tokio::pin!(work);
            let mut stream_ok = true;
            loop {
                tokio::select! {
                    reply = &mut work => break reply,
                    Some(p) = rx.recv() => {
                        if stream_ok {
                            let frame = AgentMessage::V1(AgentMessageV1::Progress(p));
                            stream_ok = write_frame(&mut send, &frame).await.is_ok();
                        }
                    }
                }
            }
        }
        Ok(Some(other)) => AgentMessageV1::Error(ErrorMessage::new(
            error_code::UNEXPECTED_MESSAGE,
            format!("expected a command, got {other:?}"),
        )),
        Ok(None) => return,
        Err(e) => AgentMessageV1::Error(ErrorMessage::new(error_code::BAD_FRAME, e.to_string())),
    };
    if let Err(e) = write_frame(&mut send, &AgentMessage::V1(reply)).await {
        warn!(error = %e, "send command reply");
    }
    let _ = send.finish();
}

/// A command's result: its outcome and `ok_message` when it succeeded, the error's
/// words when it did not.
fn outcome<T: Into<CommandOutcome>, E: std::fmt::Display>(
    result: Result<T, E>,
    ok_message: &str,
) -> Result<(String, CommandOutcome), String> {
    match result {
        Ok(v) => Ok((ok_message.to_string(), v.into())),
        Err(e) => Err(e.to_string()),
    }
}

async fn execute(
    cmd: Command,
    ctx: &CommandContext,
    progress_tx: tokio::sync::mpsc::Sender<ProgressMessage>,
) -> AgentMessageV1 {
    let span = tracing::info_span!("command", command_id = %cmd.id, epoch = %cmd.epoch);
    async {
        if let Err(e) = ctx.epochs.admit(cmd.epoch, cmd.failover.as_deref()) {
            warn!(error = %e, failover = ?cmd.failover, "refused command");
            return AgentMessageV1::Error(ErrorMessage::new(
                error_code::STALE_EPOCH,
                e.to_string(),
            ));
        }
        let command_id = cmd.id;
        let progress: ProgressFn = Arc::new(move |percent, message| {
            let _ = progress_tx.try_send(ProgressMessage {
                command_id,
                percent,
                message,
            });
        });
        let result = dispatch(cmd.kind, ctx, progress).await;
        let (ok, message, outcome) = match result {
            Ok((message, outcome)) => (true, message, Some(outcome)),
            Err(message) => (false, message, None),
        };
        AgentMessageV1::Result(CommandResult {
            command_id: cmd.id,
            ok,
            message,
            outcome,
        })
    }
    .instrument(span)
    .await
}

/// Runs one command: its message and typed outcome, or why it failed.
async fn dispatch(
    kind: CommandKind,
    ctx: &CommandContext,
    progress: ProgressFn,
) -> Result<(String, CommandOutcome), String> {
    let no_documents = || Err("this agent has no [documents] configuration".to_string());
    let no_database = || {
        Err(
            "this agent has no [database] configuration (or was not started from a file)"
                .to_string(),
        )
    };
    let no_postgres = || Err("this agent has no [postgres]".to_string());
    match kind {
        CommandKind::Ping => Ok((
            "pong".to_string(),
            CommandOutcome::Pong {
                agent_time_ms: unix_ms(),
            },
        )),
        CommandKind::ProbePostgres => {
            let status = ctx.observed.postgres.lock().clone();
            match status {
                Some(s) => Ok((format!("postgres is {}", s.role), CommandOutcome::Done)),
                None => Err("no PostgreSQL configured".to_string()),
            }
        }
        CommandKind::DocumentsBackup { backup_id, tags } => match &ctx.documents {
            None => no_documents(),
            Some(docs) => {
                let result = docs.backup(&backup_id, tags, progress).await;
                if result.is_ok() {
                    ctx.observed.remember_backup(&backup_id);
                }
                outcome(result, "document backup completed")
            }
        },
        CommandKind::DocumentsVerify { backup_id } => match &ctx.documents {
            None => no_documents(),
            Some(docs) => outcome(docs.verify(&backup_id, progress).await, "verified"),
        },
        CommandKind::DocumentsCheck {
            backup_id,
            document,
            checksums,
        } => match &ctx.documents {
            None => no_documents(),
            Some(docs) => outcome(
                docs.check(&backup_id, document, checksums).await,
                "documents checked",
            ),
        },
        CommandKind::DocumentsRestore {
            backup_id,
            paths,
            target,
        } => match &ctx.documents {
            None => no_documents(),
            Some(docs) => outcome(
                docs.restore(&backup_id, paths, target, None, progress)
                    .await,
                "restored",
            ),
        },
        CommandKind::DatabaseBackup {
            backup_id,
            backup_type,
            tags,
        } => match &ctx.database {
            None => no_database(),
            Some((db, path)) => {
                let result = crate::database::child::backup(
                    path,
                    db,
                    &backup_id,
                    &backup_type,
                    &tags,
                    progress,
                )
                .await;
                if result.is_ok() {
                    ctx.observed.remember_backup(&backup_id);
                }
                outcome(result, "database backup completed")
            }
        },
        CommandKind::VerifyDatabaseBackup {
            verification_id,
            backup_id,
        } => match &ctx.database {
            None => no_database(),
            Some((db, path)) => {
                info!(verification_id, backup_id, "verifying a database backup");
                outcome(
                    verify_database_backup(
                        db,
                        path,
                        &ctx.data_dir,
                        &verification_id,
                        &backup_id,
                        progress,
                    )
                    .await,
                    "verification finished",
                )
            }
        },
        CommandKind::DrTest { test_id, backup_id } => match &ctx.database {
            None => no_database(),
            Some((db, path)) => {
                info!(test_id, backup_id, "DR test");
                outcome(
                    dr_test(db, path, &ctx.data_dir, &test_id, &backup_id, progress).await,
                    "DR test finished",
                )
            }
        },
        CommandKind::EnforceRetention {
            dry_run,
            now,
            policies,
        } => {
            let now = now.unwrap_or_else(chrono::Utc::now);
            info!(dry_run, %now, "enforcing the retention policies");
            outcome(
                enforce_retention(ctx, &policies, now, dry_run, progress).await,
                "retention enforced",
            )
        }
        CommandKind::Copy => outcome(replicate(ctx, progress).await, "replicated"),
        CommandKind::Promote => match &ctx.postgres {
            None => no_postgres(),
            Some(pg) => outcome(crate::failover::promote(pg).await, "promoted"),
        },
        CommandKind::Fence => match &ctx.database {
            None => no_database(),
            Some((db, _)) => outcome(crate::failover::fence(db).await, "fenced"),
        },
        CommandKind::Demote => match &ctx.database {
            None => no_database(),
            Some((db, _)) => outcome(crate::failover::demote(db).await, "stopped cleanly"),
        },
        CommandKind::ConfirmArchiving => match (&ctx.database, &ctx.postgres) {
            (Some((db, _)), Some(pg)) => outcome(
                crate::database::archiving::confirm(db, pg).await,
                "archiving confirmed",
            ),
            (None, _) => no_database(),
            (_, None) => no_postgres(),
        },
        CommandKind::CatchUp { lsn, timeout_ms } => match &ctx.postgres {
            None => no_postgres(),
            Some(pg) => outcome(
                crate::failover::catch_up(pg, &lsn, Duration::from_millis(timeout_ms)).await,
                "caught up",
            ),
        },
        CommandKind::Rejoin {
            primary_host,
            primary_port,
        } => match (&ctx.database, &ctx.postgres) {
            (Some((db, path)), Some(pg)) => outcome(
                crate::failover::rejoin(db, path, pg, &primary_host, primary_port).await,
                "rejoined as a standby",
            ),
            (None, _) => no_database(),
            (_, None) => no_postgres(),
        },
        CommandKind::Repoint {
            primary_host,
            primary_port,
        } => match &ctx.postgres {
            Some(pg) => outcome(
                crate::failover::repoint(pg, &primary_host, primary_port)
                    .await
                    .map(|timeline| CommandOutcome::Repoint { timeline }),
                "streaming from the new primary",
            ),
            None => no_postgres(),
        },
        CommandKind::PitrInfo { target_time } => match &ctx.database {
            None => no_database(),
            Some((db, _)) => outcome(
                pitr_info(db, &target_time).await,
                "point-in-time information",
            ),
        },
        CommandKind::PointInTimeRecovery {
            recovery_id,
            target_time,
            backup_id,
            environment,
        } => match &ctx.database {
            None => no_database(),
            Some((db, path)) => {
                let recovery = PitrJob {
                    recovery_id,
                    target_time,
                    backup_id,
                    environment,
                };
                outcome(
                    point_in_time_recovery(db, path, recovery, progress).await,
                    "point-in-time recovery completed",
                )
            }
        },
    }
}

/// What a `PointInTimeRecovery` command asks for.
struct PitrJob {
    recovery_id: String,
    target_time: String,
    backup_id: Option<String>,
    environment: String,
}

/// Restores into the environment and recovers to the instant, in a child process as the
/// owner of the environment's directory (of the data directory when it exists).
async fn point_in_time_recovery(
    db: &crate::config::DatabaseConfig,
    path: &std::path::Path,
    job: PitrJob,
    progress: ProgressFn,
) -> Result<drmesh_protocol::api::PitrOutcome, crate::database::DatabaseError> {
    let PitrJob {
        recovery_id,
        target_time,
        backup_id,
        environment,
    } = job;
    info!(
        recovery_id,
        environment, target_time, "point-in-time recovery"
    );
    let owner = if db.data_dir.exists() {
        db.data_dir.clone()
    } else {
        db.environments
            .get(&environment)
            .and_then(|e| e.data_dir.parent().map(|p| p.to_path_buf()))
            .unwrap_or_else(|| db.data_dir.clone())
    };
    let mut args: Vec<String> = vec![
        "restore".into(),
        "--environment".into(),
        environment,
        "--time".into(),
        target_time,
    ];
    if let Some(b) = backup_id {
        args.push("--backup".into());
        args.push(b);
    }
    progress(10.0, "restoring the base backup".into());
    crate::database::child::run(path, &owner, &args, progress).await
}

/// Runs a verification in a child process as the cluster's owner, in a throw-away
/// directory made for it; the directory goes if the child could not remove it.
async fn verify_database_backup(
    db: &crate::config::DatabaseConfig,
    config: &std::path::Path,
    data_dir: &std::path::Path,
    verification_id: &str,
    backup_id: &str,
    progress: ProgressFn,
) -> Result<drmesh_protocol::api::DatabaseVerificationReport, crate::database::DatabaseError> {
    use crate::database::verify;
    drmesh_repo::valid_snapshot_id(backup_id)?;
    let (dir, owner) = {
        let (data_dir, id, owner) = (
            data_dir.to_path_buf(),
            verification_id.to_string(),
            db.data_dir.clone(),
        );
        let dir = tokio::task::spawn_blocking(move || verify::prepare_dir(&data_dir, &id, &owner))
            .await
            .map_err(|e| crate::database::DatabaseError::Io(e.to_string()))??;
        (dir, db.data_dir.clone())
    };
    let args: Vec<String> = vec![
        "verify".into(),
        "--backup".into(),
        backup_id.into(),
        "--dir".into(),
        dir.display().to_string(),
    ];
    let result = crate::database::child::run(config, &owner, &args, progress).await;
    let _ = tokio::task::spawn_blocking(move || verify::remove_scratch(&dir)).await;
    result
}

/// The retention policies applied to the agent's database repository (in a child
/// process as the cluster's owner, like every database job) and to each of its document
/// locations; a repository that fails is reported, the others still run.
async fn enforce_retention(
    ctx: &CommandContext,
    policies: &drmesh_protocol::retention::RetentionPolicies,
    now: chrono::DateTime<chrono::Utc>,
    dry_run: bool,
    progress: ProgressFn,
) -> Result<drmesh_protocol::retention::RetentionOutcome, String> {
    use drmesh_protocol::retention::{RepositoryRetention, RetentionOutcome};
    let mut out = RetentionOutcome::default();
    if let Some((db, path)) = &ctx.database {
        // `[database] retention` replaces the coordinator's database policy.
        let mut own = policies.clone();
        if let Some(p) = &db.retention {
            own.database = p.clone();
        }
        let mut args: Vec<String> = vec![
            "retention".into(),
            "--policies".into(),
            serde_json::to_string(&own).map_err(|e| e.to_string())?,
            "--now".into(),
            now.to_rfc3339(),
        ];
        if dry_run {
            args.push("--dry-run".into());
        }
        let result = crate::database::child::run(path, &db.data_dir, &args, progress.clone()).await;
        out.repositories.push(match result {
            Ok(report) => RepositoryRetention {
                repository: "database".into(),
                policy: db.retention.clone(),
                report: Some(report),
                error: None,
            },
            Err(e) => RepositoryRetention {
                repository: "database".into(),
                policy: db.retention.clone(),
                report: None,
                error: Some(e.to_string()),
            },
        });
    }
    if let Some(docs) = &ctx.documents {
        out.repositories.extend(
            docs.enforce_retention(policies, now, dry_run, ctx.archive.as_ref())
                .await,
        );
    }
    if out.repositories.is_empty() {
        return Err("this agent backs up into no repository ([database] or [documents])".into());
    }
    Ok(out)
}

/// One replication round (see `crate::copies`): the database repository's replicas
/// in a child process as the cluster's owner, the document locations here.
async fn replicate(
    ctx: &CommandContext,
    progress: ProgressFn,
) -> Result<drmesh_protocol::copies::CopiesOutcome, String> {
    use drmesh_protocol::copies::CopiesOutcome;
    let mut out = CopiesOutcome::default();
    if let Some((db, path)) = &ctx.database {
        if !db.replicas.is_empty() {
            let args: Vec<String> = vec!["replicate".into()];
            let result: Result<CopiesOutcome, _> =
                crate::database::child::run(path, &db.data_dir, &args, progress).await;
            match result {
                Ok(o) => out.locations.extend(o.locations),
                Err(e) => {
                    let now = chrono::Utc::now();
                    out.locations.extend(db.replicas.iter().map(|loc| {
                        drmesh_protocol::copies::LocationCopy {
                            state: drmesh_protocol::copies::CopyState::Behind,
                            last_error: Some(format!("the replication job failed: {e}")),
                            ..crate::copies::in_sync("database", loc, loc.url.clone(), now)
                        }
                    }));
                }
            }
        }
    }
    if let Some(docs) = &ctx.documents {
        out.locations
            .extend(docs.replicate(chrono::Utc::now()).await);
    }
    Ok(out)
}

/// Runs a DR test in a child process as the cluster's owner, in a throw-away directory
/// under the same parent as verifications' (so the agent's start-up cleanup covers it).
async fn dr_test(
    db: &crate::config::DatabaseConfig,
    config: &std::path::Path,
    data_dir: &std::path::Path,
    test_id: &str,
    backup_id: &str,
    progress: ProgressFn,
) -> Result<drmesh_protocol::api::DrTestReport, crate::database::DatabaseError> {
    use crate::database::verify;
    drmesh_repo::valid_snapshot_id(backup_id)?;
    let dir = {
        let (data_dir, id, owner) = (
            data_dir.to_path_buf(),
            test_id.to_string(),
            db.data_dir.clone(),
        );
        tokio::task::spawn_blocking(move || verify::prepare_dir(&data_dir, &id, &owner))
            .await
            .map_err(|e| crate::database::DatabaseError::Io(e.to_string()))??
    };
    let args: Vec<String> = vec![
        "dr-test".into(),
        "--backup".into(),
        backup_id.into(),
        "--dir".into(),
        dir.display().to_string(),
    ];
    let result = crate::database::child::run(config, &db.data_dir, &args, progress).await;
    let _ = tokio::task::spawn_blocking(move || verify::remove_scratch(&dir)).await;
    result
}

/// `PitrInfo`: read from the repository in this process (it only reads).
async fn pitr_info(
    db: &crate::config::DatabaseConfig,
    target_time: &str,
) -> Result<drmesh_protocol::api::PitrInfo, crate::database::DatabaseError> {
    use crate::database::DatabaseError;
    let t = chrono::DateTime::parse_from_rfc3339(target_time)
        .map_err(|e| DatabaseError::Invalid(format!("target time {target_time:?}: {e}")))?
        .with_timezone(&chrono::Utc);
    let repo = crate::database::open_existing(db).await?;
    Ok(repo.pitr_info(t).await?)
}

/// Probes PostgreSQL every heartbeat interval and publishes the result for heartbeats.
pub async fn probe_postgres(mut prober: Prober, interval: Duration, observed: Arc<Observed>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let status = prober.probe().await;
        *observed.postgres.lock() = Some(status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let max = Duration::from_secs(5);
        let mut d = Duration::from_millis(100);
        for _ in 0..20 {
            let next = next_backoff(d, max);
            assert!(next <= max);
            assert!(next >= Duration::from_millis(80));
            d = next;
        }
        assert!(d >= Duration::from_secs(4), "{d:?}");
    }

    #[test]
    fn a_follower_names_the_leader_in_a_close_reason_or_an_error() {
        assert_eq!(
            leader_named("leader=10.0.0.1:7443").as_deref(),
            Some("10.0.0.1:7443")
        );
        assert_eq!(
            leader_named("c2 does not lead; the leader is at c1.example:7443").as_deref(),
            Some("c1.example:7443")
        );
        assert_eq!(leader_named("leader="), None);
        assert_eq!(leader_named("no leader is known yet"), None);
        assert!(is_not_leader(drmesh_protocol::error_code::NOT_LEADER));
        assert!(is_not_leader(
            &drmesh_protocol::close_code::NOT_LEADER.to_string()
        ));
        assert!(!is_not_leader("unauthorized"));
    }

    #[test]
    fn a_coordinator_that_did_not_answer_is_passed_over_for_a_while() {
        let mut t = Target::default();
        assert!(!t.recently_unreachable("a:1", UNREACHABLE_FOR));
        t.unreachable = Some(("a:1".into(), Instant::now()));
        assert!(t.recently_unreachable("a:1", UNREACHABLE_FOR));
        assert!(!t.recently_unreachable("b:1", UNREACHABLE_FOR));
        assert!(!t.recently_unreachable("a:1", Duration::ZERO));
    }
}
