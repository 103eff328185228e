//! The QUIC side of the coordinator: accepts agents, proves who they are from their client
//! certificates, feeds heartbeats into the registry, and sends commands.
//!
//! Architecture Invariant: an agent's identity is the one in its certificate. A `Hello`
//! claiming another id or region closes the connection before the agent is registered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drmesh_protocol::codec::{decode_exact, encode, Frame};
use drmesh_protocol::pki::agent_identity;
use drmesh_protocol::{
    close_code, error_code, AgentId, AgentMessage, AgentMessageV1, Command, CommandKind,
    CommandResult, CoordinatorMessage, CoordinatorMessageV1, DecodeError, ErrorMessage,
    FrameDecoder, Welcome,
};
use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::CertificateDer;
use tracing::{debug, info, warn, Instrument};

use crate::rules::registry::HeartbeatOutcome;
use crate::state::{Coordinator, Session};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("TLS: {0}")]
    Tls(#[from] drmesh_protocol::tls::TlsError),
    #[error("QUIC TLS config: {0}")]
    QuicTls(String),
    #[error("bind QUIC endpoint {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("this coordinator does not lead: it sends agents no command")]
    NotLeader,
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    #[error("bad frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("encode frame: {0}")]
    Encode(#[from] drmesh_protocol::EncodeError),
    #[error("peer closed the stream before a complete message")]
    EndOfStream,
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("agent {0} is not connected")]
    NotConnected(AgentId),
    #[error("agent answered: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("unexpected message: {0}")]
    Unexpected(String),
}

/// Reads the next whole frame from a QUIC stream; `None` at a clean end of stream.
pub async fn read_frame<M: Frame>(
    recv: &mut quinn::RecvStream,
    decoder: &mut FrameDecoder,
) -> Result<Option<M>, TransportError> {
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

async fn write_frame(
    send: &mut quinn::SendStream,
    msg: &CoordinatorMessage,
) -> Result<(), TransportError> {
    send.write_all(&encode(msg)?).await?;
    Ok(())
}

/// Measures, every 100 ms, how late the QUIC runtime wakes a timer, into
/// `drmesh_quic_runtime_lag_seconds`; a lag of a heartbeat interval or more is logged,
/// since agents are then wrongly SUSPECT for the coordinator's own delay.
pub async fn watch_lag(coord: Arc<Coordinator>) {
    const PERIOD: Duration = Duration::from_millis(100);
    let warn_from = coord.config.heartbeat_interval;
    loop {
        let asked = Instant::now();
        tokio::time::sleep(PERIOD).await;
        let lag = asked.elapsed().saturating_sub(PERIOD);
        coord
            .metrics
            .quic_runtime_lag_seconds
            .observe(lag.as_secs_f64());
        if lag >= warn_from {
            warn!(
                lag_ms = lag.as_millis() as u64,
                "the QUIC runtime fell behind: heartbeats waited as long (the host's CPUs are \
                 busy, or quic_threads is too small)"
            );
        }
    }
}

/// Binds the QUIC endpoint with the coordinator's certificate and the CA as the only
/// accepted issuer of client certificates. Call it inside the runtime that is to drive
/// the endpoint (`Handle::enter`): quinn spawns its driver there.
pub fn endpoint(coord: &Coordinator) -> Result<quinn::Endpoint, TransportError> {
    let tls = drmesh_protocol::tls::server_config(&coord.config.tls)?;
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| TransportError::QuicTls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let idle = (coord.config.heartbeat_interval * 20).max(Duration::from_secs(10));
    transport.max_idle_timeout(idle.try_into().ok());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.max_concurrent_bidi_streams(16u32.into());
    transport.ack_frequency_config(Some(immediate_acks()));
    server.transport_config(Arc::new(transport));
    let addr = coord.config.quic_listen;
    let bind_err = |source| TransportError::Bind { addr, source };
    let socket = std::net::UdpSocket::bind(addr).map_err(bind_err)?;
    widen_buffers(&socket);
    match crate::udp::ReceiveQueue::new(&socket) {
        Some(queue) => {
            let _ = coord.receive_queue.set(queue);
        }
        None => warn!("cannot watch the QUIC socket's receive queue (no /proc/self/fd)"),
    }
    let (reset, cid_key) = restart_keys(&coord.config.tls.key)?;
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset));
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    quinn::Endpoint::new(
        endpoint_config,
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind_err)
}

/// Asks the peer to acknowledge every ack-eliciting packet at once (QUIC's acknowledgement
/// frequency extension, which every quinn peer supports), instead of after its
/// `max_ack_delay` (25 ms). A heartbeat acknowledgement is a lone packet with nothing to
/// ride on for half a second, so the peer's ACK for it would come at exactly 25 ms, while
/// the sender's probe timeout is that 25 ms plus a loopback- or LAN-sized RTT: a few
/// milliseconds of scheduling delay anywhere fire probes on thousands of connections at
/// once, whose answers bury the socket they are meant to test. Acknowledged at once, the
/// ACK has the whole 25 ms of margin. (Agents do not ask it of the coordinator: its
/// acknowledgement datagram, sent as soon as the heartbeat is read, carries the ACK; an
/// immediate ACK would be one more packet per heartbeat.)
pub fn immediate_acks() -> quinn::AckFrequencyConfig {
    let mut config = quinn::AckFrequencyConfig::default();
    config.ack_eliciting_threshold(0u32.into());
    config
}

/// The socket buffers asked for (the kernel doubles them: 64 MiB). 10,000 heartbeats a
/// second (5,000 agents) overflow the kernel's default 208 KiB in a few tens of
/// milliseconds of a busy runtime. After a moment when every agent fell silent at once
/// (a blip, a pause of either host), their overdue heartbeats and the probes QUIC fires
/// while the agents' ACKs wait unread here piled up to 28 MiB in the heartbeat-scale
/// bench (`FREEZES=5`); every datagram dropped is a heartbeat or an ACK lost, and losses
/// collapse the agents' congestion windows. Memory is charged only while datagrams wait.
const SOCKET_BUFFER: usize = 32 << 20;

/// Widens the QUIC socket's receive and send buffers to [`SOCKET_BUFFER`]: past
/// `net.core.rmem_max` when the process may (`SO_RCVBUFFORCE`, root), else up to it.
/// Logs what the kernel granted.
pub fn widen_buffers(socket: &std::net::UdpSocket) {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    if setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(socket, sockopt::SndBuf, &SOCKET_BUFFER);
    }
    let got = |o: Result<usize, nix::Error>| o.map(|b| b / 2).unwrap_or(0);
    let (recv, send) = (
        got(getsockopt(socket, sockopt::RcvBuf)),
        got(getsockopt(socket, sockopt::SndBuf)),
    );
    if recv < SOCKET_BUFFER / 2 {
        warn!(
            granted_bytes = recv,
            asked_bytes = SOCKET_BUFFER,
            "the QUIC socket's receive buffer is small: raise net.core.rmem_max, or heartbeats \
             of many agents may be dropped"
        );
    } else {
        debug!(recv_bytes = recv, send_bytes = send, "QUIC socket buffers");
    }
}

/// The keys of QUIC stateless resets and of connection-id validation, derived from the
/// coordinator's private key so they survive restarts: a restarted coordinator recognizes
/// the connection ids it issued before and answers their packets with a stateless reset
/// the agent accepts, so the agent reconnects at once instead of waiting for its idle
/// timeout.
fn restart_keys(key_file: &std::path::Path) -> Result<(ring::hmac::Key, u64), TransportError> {
    use sha2::{Digest, Sha256};
    let secret = std::fs::read(key_file)
        .map_err(|e| TransportError::QuicTls(format!("read {}: {e}", key_file.display())))?;
    let derive = |label: &[u8]| {
        let mut h = Sha256::new();
        h.update(label);
        h.update(&secret);
        h.finalize()
    };
    let reset = derive(b"drmesh quic stateless reset v1");
    let cid = derive(b"drmesh quic connection id v1");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid[..8]);
    Ok((
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset),
        u64::from_le_bytes(cid_key),
    ))
}

/// Accepts connections until the endpoint closes.
pub async fn serve(endpoint: quinn::Endpoint, coord: Arc<Coordinator>) {
    while let Some(incoming) = endpoint.accept().await {
        let coord = coord.clone();
        let remote = incoming.remote_address();
        tokio::spawn(
            async move {
                match handle(incoming, &coord).await {
                    Ok(()) => {}
                    // Connected, but no hello in time: worth an operator's eye (an
                    // overloaded coordinator, or something that is not an agent).
                    Err(e @ TransportError::Timeout(_)) => {
                        warn!(error = %e, "agent connection dropped before its hello")
                    }
                    Err(e) => debug!(error = %e, "agent connection ended"),
                }
            }
            .instrument(tracing::info_span!("agent_conn", %remote)),
        );
    }
}

fn peer_certificate(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().cloned()
}

async fn refuse(
    coord: &Coordinator,
    conn: &quinn::Connection,
    send: Option<&mut quinn::SendStream>,
    reason: &'static str,
    message: String,
) {
    warn!(reason, %message, "refused agent connection");
    coord.metrics.refused(reason);
    if let Some(send) = send {
        let msg = CoordinatorMessage::V1(CoordinatorMessageV1::Error(ErrorMessage::new(
            error_code::IDENTITY_MISMATCH,
            message.clone(),
        )));
        let _ = write_frame(send, &msg).await;
        let _ = send.finish();
        // Give the error frame a moment to leave before the close frame overtakes it.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    conn.close(close_code::REFUSED.into(), message.as_bytes());
}

/// A follower's answer to a hello: the leader's QUIC address, when known, in an error
/// frame and in the close reason ([`close_code::NOT_LEADER`]).
async fn redirect(coord: &Coordinator, conn: &quinn::Connection, send: &mut quinn::SendStream) {
    let leader = match coord.leadership() {
        crate::leader::Leadership::Follower {
            leader: Some(l), ..
        } => Some(l.quic),
        _ => None,
    };
    coord.metrics.refused("not_leader");
    let reason = leader
        .as_deref()
        .map(|l| format!("leader={l}"))
        .unwrap_or_default();
    debug!(leader = ?leader, "hello to a follower: the agent is sent to the leader");
    let msg = CoordinatorMessage::V1(CoordinatorMessageV1::Error(ErrorMessage::new(
        error_code::NOT_LEADER,
        match &leader {
            Some(l) => format!("this coordinator does not lead; the leader is at {l}"),
            None => "this coordinator does not lead, and knows no leader yet".into(),
        },
    )));
    let _ = write_frame(send, &msg).await;
    let _ = send.finish();
    tokio::time::sleep(Duration::from_millis(50)).await;
    conn.close(close_code::NOT_LEADER.into(), reason.as_bytes());
}

async fn handle(incoming: quinn::Incoming, coord: &Arc<Coordinator>) -> Result<(), TransportError> {
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            // A missing certificate, one from another CA, or an expired one ends here.
            warn!(error = %e, "refused agent connection: TLS handshake failed");
            coord.metrics.refused("tls");
            return Ok(());
        }
    };
    let Some(cert) = peer_certificate(&conn) else {
        refuse(
            coord,
            &conn,
            None,
            "no_certificate",
            "no client certificate".into(),
        )
        .await;
        return Ok(());
    };
    let (cert_id, cert_region) = match agent_identity(&cert) {
        Ok(identity) => identity,
        Err(e) => {
            refuse(coord, &conn, None, "not_agent", e.to_string()).await;
            return Ok(());
        }
    };
    let span = tracing::info_span!("agent", agent_id = %cert_id, region = %cert_region);
    async move {
        let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
            .await
            .map_err(|_| TransportError::Timeout("control stream"))??;
        let mut decoder = FrameDecoder::new();
        let hello = match tokio::time::timeout(
            Duration::from_secs(10),
            read_frame::<AgentMessage>(&mut recv, &mut decoder),
        )
        .await
        {
            Err(_) => return Err(TransportError::Timeout("hello")),
            Ok(Err(TransportError::Decode(e))) => {
                coord.metrics.bad_frames.inc();
                refuse(
                    coord,
                    &conn,
                    Some(&mut send),
                    "bad_frame",
                    format!("bad hello: {e}"),
                )
                .await;
                return Ok(());
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(None)) => return Err(TransportError::EndOfStream),
            Ok(Ok(Some(AgentMessage::V1(AgentMessageV1::Hello(hello))))) => hello,
            Ok(Ok(Some(other))) => {
                refuse(
                    coord,
                    &conn,
                    Some(&mut send),
                    "protocol",
                    format!("expected hello, got {other:?}"),
                )
                .await;
                return Ok(());
            }
        };
        if hello.agent_id != cert_id || hello.region != cert_region {
            let message = format!(
                "agent claims id {} in {} but its certificate says {} in {}",
                hello.agent_id, hello.region, cert_id, cert_region
            );
            refuse(coord, &conn, Some(&mut send), "identity_mismatch", message).await;
            return Ok(());
        }
        if !coord.in_office() {
            redirect(coord, &conn, &mut send).await;
            return Ok(());
        }
        let (connection, transition) = coord.registry.lock().connect(
            &cert_id,
            &cert_region,
            &hello.version,
            &hello.capabilities,
            Instant::now(),
        );
        coord.report(transition);
        let addresses = crate::rules::registry::AgentAddresses {
            mesh: hello.mesh_addr,
            postgres: hello.postgres_addr,
            postgres_mesh: hello.postgres_mesh_addr,
        };
        coord.set_addresses(&cert_id, &cert_region, &hello.version, addresses);
        let previous = coord.sessions.lock().insert(
            cert_id.clone(),
            Session {
                connection,
                conn: conn.clone(),
            },
        );
        if let Some(old) = previous {
            old.conn
                .close(close_code::NORMAL.into(), b"replaced by a newer connection");
        }
        let welcome = CoordinatorMessage::V1(CoordinatorMessageV1::Welcome(Welcome {
            agent_id: cert_id.clone(),
            region: cert_region.clone(),
            coordinator_version: drmesh_protocol::VERSION.to_string(),
            heartbeat_interval_ms: coord.config.heartbeat_interval.as_millis() as u64,
            epoch: coord.epoch(),
            mesh: Some(coord.mesh_view().as_ref().clone()),
        }));
        write_frame(&mut send, &welcome).await?;
        info!(version = %hello.version, remote = %conn.remote_address(), "agent connected");

        let reason = receive_heartbeats(&conn, coord, &cert_id, connection).await;
        let transition = coord
            .registry
            .lock()
            .disconnect(&cert_id, connection, &reason);
        coord.report(transition);
        {
            let mut sessions = coord.sessions.lock();
            if sessions
                .get(&cert_id)
                .is_some_and(|s| s.connection == connection)
            {
                sessions.remove(&cert_id);
            }
        }
        info!(%reason, "agent disconnected");
        Ok(())
    }
    .instrument(span)
    .await
}

/// Reads heartbeat datagrams until the connection ends; returns why it ended.
async fn receive_heartbeats(
    conn: &quinn::Connection,
    coord: &Coordinator,
    id: &AgentId,
    connection: u64,
) -> String {
    loop {
        let datagram = match conn.read_datagram().await {
            Ok(d) => d,
            Err(e) => return e.to_string(),
        };
        let arrived = Instant::now();
        match decode_exact::<AgentMessage>(&datagram) {
            Ok(AgentMessage::V1(AgentMessageV1::Heartbeat(hb))) => {
                let seq = hb.seq;
                // An agent that sends no mesh report takes no part in the mesh: it is
                // sent no view.
                let generation = hb.mesh.as_ref().map(|m| m.generation);
                let mesh_peers = hb
                    .mesh
                    .as_ref()
                    .filter(|m| m.generation != 0)
                    .map(|m| m.peer_count);
                // An agent that sends no mesh report cannot be shown to fence itself.
                let can_fence = hb.mesh.as_ref().is_some_and(|m| m.can_fence);
                let outcome = coord.registry.lock().heartbeat(
                    id,
                    connection,
                    hb,
                    arrived,
                    chrono::Utc::now(),
                );
                match outcome {
                    HeartbeatOutcome::Accepted(transition) => {
                        acknowledge(conn, coord, seq, generation);
                        coord.note_lease_facts(id, mesh_peers, can_fence);
                        coord
                            .metrics
                            .heartbeat_update_seconds
                            .observe(arrived.elapsed().as_secs_f64());
                        coord.metrics.heartbeats.inc();
                        coord.report(transition);
                    }
                    HeartbeatOutcome::Stale => debug!("reordered heartbeat dropped"),
                    HeartbeatOutcome::Unknown => {
                        return "connection replaced".into();
                    }
                }
            }
            Ok(other) => {
                coord.metrics.bad_frames.inc();
                warn!(message = ?other, "unexpected datagram ignored");
            }
            Err(e) => {
                coord.metrics.bad_frames.inc();
                warn!(error = %e, "undecodable datagram ignored");
            }
        }
    }
}

/// Answers an accepted heartbeat (renewing the agent's lease), with the mesh view when
/// the agent reported one (`generation`) and it is out of date. Not while this coordinator's leadership is unproven: an
/// acknowledgement sent after a successor could have been elected would renew a lease
/// the successor is waiting out.
fn acknowledge(conn: &quinn::Connection, coord: &Coordinator, seq: u64, generation: Option<u64>) {
    if !coord.may_act() {
        debug!("not acknowledged: this coordinator's leadership is not proven now");
        return;
    }
    let view = coord.mesh_view();
    let ack = CoordinatorMessage::V1(CoordinatorMessageV1::HeartbeatAck(
        drmesh_protocol::HeartbeatAck {
            seq,
            epoch: coord.epoch(),
            mesh: generation
                .is_some_and(|g| g != view.generation)
                .then(|| view.as_ref().clone()),
        },
    ));
    match encode(&ack) {
        Ok(bytes) => {
            if let Err(e) = conn.send_datagram(bytes.into()) {
                debug!(error = %e, "heartbeat acknowledgement not sent");
            }
        }
        Err(e) => warn!(error = %e, "encode heartbeat acknowledgement"),
    }
}

/// Sends one command to an agent on a new bidirectional stream and waits for its result.
/// Progress reports are logged.
pub async fn send_command(
    coord: &Coordinator,
    agent: &AgentId,
    kind: CommandKind,
    timeout: Duration,
) -> Result<CommandResult, TransportError> {
    send_command_with_progress(coord, agent, kind, timeout, |p| {
        info!(command_id = %p.command_id, percent = p.percent, message = %p.message, "command progress")
    })
    .await
}

/// Sends a command and waits for its result, handing every progress report to
/// `on_progress` as it arrives.
pub async fn send_command_with_progress(
    coord: &Coordinator,
    agent: &AgentId,
    kind: CommandKind,
    timeout: Duration,
    on_progress: impl FnMut(drmesh_protocol::Progress),
) -> Result<CommandResult, TransportError> {
    let command = Command {
        id: drmesh_protocol::CommandId::random(),
        epoch: coord.epoch(),
        kind,
        failover: None,
    };
    exchange(coord, agent, command, timeout, on_progress).await
}

/// Sends a command on behalf of failover `failover`, under its `epoch`: the agent admits
/// it only if it has seen no newer epoch, and no other failover at this one.
pub async fn send_for_failover(
    coord: &Coordinator,
    agent: &AgentId,
    kind: CommandKind,
    timeout: Duration,
    failover: &str,
    epoch: drmesh_protocol::Epoch,
) -> Result<CommandResult, TransportError> {
    let command = Command {
        id: drmesh_protocol::CommandId::random(),
        epoch,
        kind,
        failover: Some(failover.to_string()),
    };
    exchange(coord, agent, command, timeout, |p| {
        info!(command_id = %p.command_id, percent = p.percent, message = %p.message, "command progress")
    })
    .await
}

async fn exchange(
    coord: &Coordinator,
    agent: &AgentId,
    command: Command,
    timeout: Duration,
    mut on_progress: impl FnMut(drmesh_protocol::Progress),
) -> Result<CommandResult, TransportError> {
    if !coord.may_act() {
        return Err(TransportError::NotLeader);
    }
    let session = coord
        .sessions
        .lock()
        .get(agent)
        .cloned()
        .ok_or_else(|| TransportError::NotConnected(agent.clone()))?;
    let command_id = command.id;
    let exchange = async {
        let (mut send, mut recv) = session.conn.open_bi().await?;
        write_frame(
            &mut send,
            &CoordinatorMessage::V1(CoordinatorMessageV1::Command(command)),
        )
        .await?;
        send.finish()?;
        let mut decoder = FrameDecoder::new();
        loop {
            match read_frame::<AgentMessage>(&mut recv, &mut decoder).await? {
                None => return Err(TransportError::EndOfStream),
                Some(AgentMessage::V1(AgentMessageV1::Progress(p))) => {
                    if p.command_id == command_id {
                        on_progress(p)
                    }
                }
                Some(AgentMessage::V1(AgentMessageV1::Result(r))) => return Ok(r),
                Some(AgentMessage::V1(AgentMessageV1::Error(e))) => {
                    return Err(TransportError::Refused {
                        code: e.code,
                        message: e.message,
                    })
                }
                Some(other) => return Err(TransportError::Unexpected(format!("{other:?}"))),
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| TransportError::Timeout("command result"))?
}
