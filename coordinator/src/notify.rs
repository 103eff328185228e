//! Notifications to the channels configured in `[notify.NAME]`: a Slack-compatible
//! webhook, a generic JSON webhook signed with HMAC-SHA256, email over SMTP.
//!
//! Failover steps 1 and 7 tell a plan's channels. A notification never holds up what
//! sent it: [`Notifier::spawn`] sends in the background, retries a failed send a bounded
//! number of times, logs each failure and raises a HIGH `NOTIFICATION_FAILED` alert when
//! the last try fails. Secrets (webhook keys, SMTP passwords) are read from files when
//! sending and never logged.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use drmesh_protocol::api::Severity;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tracing::{info, warn};

use crate::config::NotifyChannel;
use crate::state::Coordinator;

/// Alert kind raised when a channel could not be told.
pub const NOTIFICATION_FAILED: &str = "NOTIFICATION_FAILED";

/// Tries per notification, and the pause before the first retry (doubled each time).
const TRIES: u32 = 4;
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// How long one HTTP post or SMTP session may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("no notification channel {0:?} is configured")]
    UnknownChannel(String),
    #[error("{channel}: {message}")]
    Send { channel: String, message: String },
}

/// What is told: the same fields go into the webhook JSON, the Slack text and the mail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// e.g. `failover.initiated`, `failover.completed`, `test`.
    pub kind: String,
    pub severity: Severity,
    pub title: String,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    pub at: DateTime<Utc>,
}

impl Event {
    pub fn new(kind: &str, severity: Severity, title: String, text: String) -> Self {
        Self {
            kind: kind.to_string(),
            severity,
            title,
            text,
            plan_id: None,
            at: Utc::now(),
        }
    }
}

/// The `X-Drmesh-Signature` value for `body` under `secret`: `sha256=<hex HMAC>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    // A trailing newline from `echo secret > file` is not part of the secret.
    let trimmed = text.strip_suffix(b"\n").unwrap_or(&text);
    Ok(trimmed.strip_suffix(b"\r").unwrap_or(trimmed).to_vec())
}

/// Sends `event` to one channel, once. Blocking: run it off the async runtime.
pub fn send_once(name: &str, channel: &NotifyChannel, event: &Event) -> Result<(), NotifyError> {
    let fail = |message: String| NotifyError::Send {
        channel: name.to_string(),
        message,
    };
    let agent = ureq::AgentBuilder::new().timeout(SEND_TIMEOUT).build();
    let post = |url: &str, body: Vec<u8>, headers: &[(&str, String)]| {
        let mut req = agent.post(url).set("Content-Type", "application/json");
        for (k, v) in headers {
            req = req.set(k, v);
        }
        // The URL is a secret (a Slack webhook's is its path): said as far as its host.
        let shown = drmesh_protocol::redact::url(url);
        match req.send_bytes(&body) {
            Ok(_) => Ok(()),
            Err(ureq::Error::Status(code, resp)) => Err(fail(format!(
                "{shown} answered HTTP {code}: {}",
                resp.into_string()
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect::<String>()
            ))),
            Err(ureq::Error::Transport(t)) => Err(fail(format!(
                "{shown}: {}{}",
                t.kind(),
                t.message().map(|m| format!(": {m}")).unwrap_or_default()
            ))),
        }
    };
    match channel {
        NotifyChannel::Slack { url } => {
            let text = format!("*{}* ({:?})\n{}", event.title, event.severity, event.text);
            let body = serde_json::to_vec(&serde_json::json!({ "text": text }))
                .map_err(|e| fail(e.to_string()))?;
            post(url, body, &[])
        }
        NotifyChannel::Webhook { url, secret_file } => {
            let body = serde_json::to_vec(event).map_err(|e| fail(e.to_string()))?;
            let mut headers = vec![("X-Drmesh-Event", event.kind.clone())];
            if let Some(file) = secret_file {
                let secret = read_secret(file).map_err(fail)?;
                headers.push(("X-Drmesh-Signature", signature(&secret, &body)));
            }
            post(url, body, &headers)
        }
        NotifyChannel::Email {
            smtp_host,
            smtp_port,
            security,
            from,
            to,
            username,
            password_file,
        } => send_mail(
            smtp_host,
            *smtp_port,
            security.as_deref(),
            from,
            to,
            username.as_deref().zip(password_file.as_deref()),
            event,
        )
        .map_err(fail),
    }
}

fn send_mail(
    host: &str,
    port: Option<u16>,
    security: Option<&str>,
    from: &str,
    to: &[String],
    login: Option<(&str, &std::path::Path)>,
    event: &Event,
) -> Result<(), String> {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{Message, SmtpTransport, Transport};
    let mut message = Message::builder()
        .from(from.parse().map_err(|e| format!("from {from:?}: {e}"))?)
        .subject(format!("[drmesh {:?}] {}", event.severity, event.title));
    for addr in to {
        message = message.to(addr.parse().map_err(|e| format!("to {addr:?}: {e}"))?);
    }
    let body = format!(
        "{}\n\nkind: {}\nplan: {}\nat: {}\n",
        event.text,
        event.kind,
        event.plan_id.as_deref().unwrap_or("-"),
        event.at.to_rfc3339()
    );
    let message = message
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| format!("build the mail: {e}"))?;
    let builder = match security.unwrap_or("none") {
        "tls" => SmtpTransport::relay(host).map_err(|e| e.to_string())?,
        "starttls" => SmtpTransport::starttls_relay(host).map_err(|e| e.to_string())?,
        _ => SmtpTransport::builder_dangerous(host),
    };
    let mut builder = builder.timeout(Some(SEND_TIMEOUT));
    if let Some(port) = port {
        builder = builder.port(port);
    }
    if let Some((user, file)) = login {
        let password = String::from_utf8(read_secret(file)?)
            .map_err(|_| format!("{} is not UTF-8", file.display()))?;
        builder = builder.credentials(Credentials::new(user.to_string(), password));
    }
    builder
        .build()
        .send(&message)
        .map(|_| ())
        .map_err(|e| format!("SMTP {host}: {e}"))
}

/// Sends notifications for a coordinator.
pub struct Notifier;

impl Notifier {
    /// Sends `event` to channel `name` now, retrying; the last error if every try failed.
    pub async fn send(
        coord: &Arc<Coordinator>,
        name: &str,
        event: &Event,
    ) -> Result<(), NotifyError> {
        let channel = coord
            .config
            .notify
            .get(name)
            .cloned()
            .ok_or_else(|| NotifyError::UnknownChannel(name.to_string()))?;
        let mut pause = FIRST_RETRY;
        let mut tries = 0;
        loop {
            tries += 1;
            let (n, c, e) = (name.to_string(), channel.clone(), event.clone());
            let result = tokio::task::spawn_blocking(move || send_once(&n, &c, &e))
                .await
                .unwrap_or_else(|e| {
                    Err(NotifyError::Send {
                        channel: name.to_string(),
                        message: format!("send task: {e}"),
                    })
                });
            match result {
                Ok(()) => {
                    info!(channel = name, kind = %event.kind, tries, "notification sent");
                    return Ok(());
                }
                Err(e) if tries >= TRIES => {
                    warn!(channel = name, kind = %event.kind, error = %e, "notification failed; giving up");
                    return Err(e);
                }
                Err(e) => {
                    warn!(channel = name, kind = %event.kind, error = %e, tries, "notification failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
    }

    /// Tells every channel in `channels` in the background; a channel that cannot be
    /// told raises a HIGH `NOTIFICATION_FAILED` alert. Returns at once.
    pub fn spawn(coord: &Arc<Coordinator>, channels: &[String], event: Event) {
        for name in channels {
            let (coord, name, event) = (coord.clone(), name.clone(), event.clone());
            tokio::spawn(async move {
                if let Err(e) = Self::send(&coord, &name, &event).await {
                    let raised = crate::alerts::raise(
                        coord.store.as_ref(),
                        Severity::High,
                        NOTIFICATION_FAILED,
                        &format!("notify:{name}"),
                        None,
                        format!("could not tell channel {name} about {}: {e}", event.title),
                    );
                    if let Err(e) = raised {
                        warn!(error = %e, "raise the notification alert");
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_in_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn secrets_lose_their_trailing_newline_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("s");
        std::fs::write(&f, b" k e y \n").expect("write");
        assert_eq!(read_secret(&f).expect("read"), b" k e y ");
    }
}
