//! AWS Signature Version 4 for the Route 53 API: [`AwsCredentials`] (from a file or
//! the `AWS_*` variables) and the signed headers of one request.

use std::fmt;
use std::iter;
use std::path::Path;
use std::time::SystemTime;

use super::DnsError;

/// AWS credentials for SigV4. `Debug` shows the access key id only.
#[derive(Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl AwsCredentials {
    pub fn new(
        access_key_id: &str,
        secret_access_key: &str,
        session_token: Option<&str>,
    ) -> AwsCredentials {
        AwsCredentials {
            access_key_id: access_key_id.to_string(),
            secret_access_key: secret_access_key.to_string(),
            session_token: session_token.map(str::to_string),
        }
    }

    /// `access_key_id` with the secret read from `secret_file` (surrounding whitespace
    /// dropped).
    pub fn load(access_key_id: &str, secret_file: &Path) -> Result<AwsCredentials, DnsError> {
        let bad = |message: String| {
            DnsError::Config(format!(
                "secret_access_key_file {}: {message}",
                secret_file.display()
            ))
        };
        let text = std::fs::read_to_string(secret_file).map_err(|e| bad(format!("read: {e}")))?;
        let secret = text.trim();
        if secret.is_empty() {
            return Err(bad("empty".into()));
        }
        Ok(AwsCredentials::new(access_key_id.trim(), secret, None))
    }

    /// From the standard variables `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and the
    /// optional `AWS_SESSION_TOKEN`, as `var` reads them.
    pub fn from_env_with(var: impl Fn(&str) -> Option<String>) -> Result<AwsCredentials, DnsError> {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => Ok(AwsCredentials::new(
                id.trim(),
                secret.trim(),
                get("AWS_SESSION_TOKEN").as_deref().map(str::trim),
            )),
            _ => Err(DnsError::Config(
                "route53 needs credentials: access_key_id and secret_access_key_file in [dns], or the environment variables AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
            )),
        }
    }

    /// From the process environment; see [`AwsCredentials::from_env_with`].
    pub fn from_env() -> Result<AwsCredentials, DnsError> {
        Self::from_env_with(|name| std::env::var(name).ok())
    }
}

/// The SigV4 headers (`authorization`, `x-amz-date`, and `x-amz-security-token` with a
/// session token) for `method url` with `body`, signed at `time` for `service` in
/// `region` (the host is the URL's).
pub(super) fn sigv4_headers(
    credentials: &AwsCredentials,
    region: &str,
    service: &str,
    method: &str,
    url: &str,
    body: &[u8],
    time: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    use aws_sigv4::http_request::{
        sign, SignableBody, SignableRequest, SigningParams, SigningSettings,
    };
    let identity: aws_smithy_runtime_api::client::identity::Identity =
        aws_credential_types::Credentials::new(
            &credentials.access_key_id,
            &credentials.secret_access_key,
            credentials.session_token.clone(),
            None,
            "drmesh",
        )
        .into();
    let params: SigningParams = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let request = SignableRequest::new(method, url, iter::empty(), SignableBody::Bytes(body))
        .map_err(|e| e.to_string())?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn sigv4_matches_the_get_vanilla_vector() {
        // aws-sig-v4-test-suite/get-vanilla: GET / at 2015-08-30T12:36:00Z.
        let creds = AwsCredentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
        );
        let time = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let headers = sigv4_headers(
            &creds,
            "us-east-1",
            "service",
            "GET",
            "https://example.amazonaws.com/",
            b"",
            time,
        )
        .expect("sign");
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("x-amz-date").as_deref(), Some("20150830T123600Z"));
        assert_eq!(
            get("authorization").as_deref(),
            Some("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
        );
        // A session token travels as x-amz-security-token.
        let creds = AwsCredentials::new("AKIDEXAMPLE", "secret", Some("tok"));
        let headers = sigv4_headers(
            &creds,
            "us-east-1",
            "route53",
            "POST",
            "http://127.0.0.1:5000/2013-04-01/hostedzone/Z1/rrset/",
            b"<x/>",
            time,
        )
        .expect("sign");
        assert!(headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("x-amz-security-token") && v == "tok"));
    }

    #[test]
    fn credentials_come_from_the_environment_or_a_file() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let c = AwsCredentials::from_env_with(env(&[
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "sk"),
            ("AWS_SESSION_TOKEN", "st"),
        ]))
        .expect("creds");
        assert_eq!(c.access_key_id, "AKID");
        assert_eq!(c.session_token.as_deref(), Some("st"));
        let err = AwsCredentials::from_env_with(env(&[("AWS_ACCESS_KEY_ID", "AKID")]))
            .expect_err("no secret");
        assert!(err.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{err}");
        assert!(err.is_permanent());

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("sk");
        std::fs::write(&file, "  the-secret\n").expect("write");
        let c = AwsCredentials::load("AKID", &file).expect("load");
        assert_eq!(c.secret_access_key, "the-secret");
        std::fs::write(&file, "\n").expect("write");
        assert!(AwsCredentials::load("AKID", &file).is_err());
    }
}
