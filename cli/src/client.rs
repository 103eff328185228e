//! A small blocking client for the coordinator's REST API.

use std::time::Duration;

use anyhow::{anyhow, Context};
use drmesh_protocol::api::ErrorBody;
use serde::de::DeserializeOwned;

pub struct Client {
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(url: &str, token: Option<String>) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(30))
            .build();
        Self {
            url: url.trim_end_matches('/').to_string(),
            token,
            agent,
        }
    }

    /// The same client with another per-request timeout (30 s by default).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.agent = ureq::AgentBuilder::new().timeout(timeout).build();
        self
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let req = self.agent.request(method, &format!("{}{path}", self.url));
        match &self.token {
            Some(t) => req.set("Authorization", &format!("Bearer {t}")),
            None => req,
        }
    }

    fn finish<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        result: Result<ureq::Response, ureq::Error>,
    ) -> anyhow::Result<T> {
        match result {
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
            Err(e) => Err(anyhow!(
                "{method} {path}: cannot reach the coordinator at {}: {e} (set DRMESH_URL or --url)",
                self.url
            )),
        }
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.finish("GET", path, self.request("GET", path).call())
    }

    pub fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<T> {
        self.finish(
            "PUT",
            path,
            self.request("PUT", path).send_json(body.clone()),
        )
    }

    /// A DELETE whose answer has no body.
    pub fn delete(&self, path: &str) -> anyhow::Result<()> {
        match self.request("DELETE", path).call() {
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
        self.finish(
            "POST",
            path,
            self.request("POST", path).send_json(body.clone()),
        )
    }
}
