//! A small blocking client for the coordinator's REST API.
//!
//! It takes one coordinator URL or several, comma-separated (`DRMESH_URL=http://a:3000,
//! http://b:3000`). Any coordinator answers: a follower forwards writes to the leader.
//! A coordinator that cannot be reached, or that answers 503 `not_leader` (nothing was
//! done), is passed over for the next; the one that answered is asked first next time.

use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use drmesh_protocol::api::ErrorBody;
use serde::de::DeserializeOwned;

pub struct Client {
    urls: Vec<String>,
    /// The coordinator asked first: the last one that answered.
    current: Cell<usize>,
    token: Option<String>,
    /// Trusting only the `--ca-cert` CA, when given.
    tls: Option<Arc<rustls::ClientConfig>>,
    agent: ureq::Agent,
}

/// An agent with `timeout` per request, trusting `tls`'s CA (else the public ones).
fn agent(timeout: Duration, tls: Option<&Arc<rustls::ClientConfig>>) -> ureq::Agent {
    let builder = ureq::AgentBuilder::new().timeout(timeout);
    match tls {
        Some(tls) => builder.tls_config(tls.clone()),
        None => builder,
    }
    .build()
}

/// The coordinator URLs in `list` (comma-separated), without trailing slashes.
pub fn parse_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .collect()
}

/// One coordinator's answer (the error boxed: ureq's is large).
type Reply = Result<ureq::Response, Box<ureq::Error>>;

/// What one coordinator's answer means for the next.
enum Next {
    /// The answer.
    Final(Reply),
    /// The request reached no coordinator, or one that refused it before doing anything
    /// (503 `not_leader`): another may be asked.
    Retry(Reply),
}

fn final_or_retry(result: Result<ureq::Response, ureq::Error>) -> Next {
    match result {
        Err(ureq::Error::Transport(t))
            if matches!(
                t.kind(),
                ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Dns
            ) =>
        {
            Next::Retry(Err(Box::new(ureq::Error::Transport(t))))
        }
        Err(ureq::Error::Status(503, resp)) => {
            let text = resp.into_string().unwrap_or_default();
            let not_leader =
                serde_json::from_str::<ErrorBody>(&text).is_ok_and(|b| b.error == "not_leader");
            let rebuilt = match ureq::Response::new(503, "Service Unavailable", &text) {
                Ok(r) => Err(Box::new(ureq::Error::Status(503, r))),
                Err(e) => Err(Box::new(e)),
            };
            if not_leader {
                Next::Retry(rebuilt)
            } else {
                Next::Final(rebuilt)
            }
        }
        other => Next::Final(other.map_err(Box::new)),
    }
}

impl Client {
    /// A client of the coordinators at `url` (comma-separated), trusting the CA
    /// certificate in `ca_cert` for `https://` ones.
    pub fn new(url: &str, token: Option<String>, ca_cert: Option<&Path>) -> anyhow::Result<Self> {
        let tls = ca_cert
            .map(|p| {
                drmesh_protocol::tls::https_client_config(p)
                    .map(Arc::new)
                    .with_context(|| format!("--ca-cert {}", p.display()))
            })
            .transpose()?;
        let mut urls = parse_urls(url);
        if urls.is_empty() {
            urls.push(url.to_string());
        }
        Ok(Self {
            urls,
            current: Cell::new(0),
            token,
            agent: agent(Duration::from_secs(30), tls.as_ref()),
            tls,
        })
    }

    /// The coordinator URL asked first.
    fn url(&self) -> &str {
        &self.urls[self.current.get() % self.urls.len()]
    }

    /// Sends one request, to each coordinator in turn while [`try_another`] allows.
    fn send(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> Reply {
        let start = self.current.get();
        let n = self.urls.len();
        let mut k = 0;
        loop {
            let i = (start + k) % n;
            self.current.set(i);
            let req = self.request(method, path);
            let result = match body {
                Some(b) => req.send_json(b.clone()),
                None => req.call(),
            };
            k += 1;
            match final_or_retry(result) {
                Next::Final(answer) => return answer,
                Next::Retry(answer) if k >= n => return answer,
                Next::Retry(_) => continue,
            }
        }
    }

    /// The same client with another per-request timeout (30 s by default).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.agent = agent(timeout, self.tls.as_ref());
        self
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let req = self.agent.request(method, &format!("{}{path}", self.url()));
        match &self.token {
            Some(t) => req.set("Authorization", &format!("Bearer {t}")),
            None => req,
        }
    }

    fn finish<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        result: Reply,
    ) -> anyhow::Result<T> {
        match result.map_err(|e| *e) {
            Ok(resp) => resp
                .into_json::<T>()
                .with_context(|| format!("read the answer to {method} {path}")),
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let message = serde_json::from_str::<ErrorBody>(&text)
                    .map(|b| b.message)
                    .unwrap_or(text);
                let hint = match code {
                    401 => " (set DRMESH_TOKEN or --token)",
                    _ => "",
                };
                Err(anyhow!("{method} {path}: HTTP {code}: {message}{hint}"))
            }
            Err(e) if self.urls.len() > 1 => Err(anyhow!(
                "{method} {path}: cannot reach any of the coordinators {}: {e} (set DRMESH_URL or --url)",
                self.urls.join(", ")
            )),
            Err(e) => Err(anyhow!(
                "{method} {path}: cannot reach the coordinator at {}: {e} (set DRMESH_URL or --url)",
                self.url()
            )),
        }
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.finish("GET", path, self.send("GET", path, None))
    }

    pub fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<T> {
        self.finish("PUT", path, self.send("PUT", path, Some(body)))
    }

    /// A DELETE whose answer has no body.
    pub fn delete(&self, path: &str) -> anyhow::Result<()> {
        match self.send("DELETE", path, None) {
            Ok(_) => Ok(()),
            Err(e) => self
                .finish::<serde_json::Value>("DELETE", path, Err(e))
                .map(|_| ()),
        }
    }

    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<T> {
        self.finish("POST", path, self.send("POST", path, Some(body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_coordinator_urls_are_taken_comma_separated() {
        assert_eq!(
            parse_urls("http://a:3000/, http://b:3000 ,,http://c:3000"),
            vec!["http://a:3000", "http://b:3000", "http://c:3000"]
        );
        assert_eq!(parse_urls("http://a:3000"), vec!["http://a:3000"]);
    }

    #[test]
    #[allow(clippy::result_large_err)] // ureq's own answer type
    fn only_a_refusal_that_did_nothing_is_retried_elsewhere() {
        let body =
            |code: &str| format!("{{\"status\":503,\"error\":\"{code}\",\"message\":\"m\"}}");
        let answer = |status: u16, text: &str| match ureq::Response::new(status, "x", text) {
            Ok(r) if status >= 400 => Err(ureq::Error::Status(status, r)),
            Ok(r) => Ok(r),
            Err(e) => Err(e),
        };
        let retried = |a| matches!(final_or_retry(a), Next::Retry(_));
        assert!(retried(answer(503, &body("not_leader"))));
        assert!(!retried(answer(503, &body("unavailable"))));
        assert!(!retried(answer(409, &body("conflict"))));
        assert!(!retried(answer(200, "{}")));
        // The answer passed on still carries its body.
        let Next::Final(Err(e)) = final_or_retry(answer(503, &body("unavailable"))) else {
            panic!("a 503 that is not not_leader is final");
        };
        let ureq::Error::Status(503, r) = *e else {
            panic!("still the 503");
        };
        assert!(r.into_string().unwrap_or_default().contains("unavailable"));
    }
}
