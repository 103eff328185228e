//! TSIG keys (RFC 8945) for signing RFC 2136 updates: [`TsigAlgorithmName`] and
//! [`TsigKey`], read from a bare base64 secret or from a BIND `key` statement as
//! `tsig-keygen` writes it (a small named.conf tokenizer and parser).

use std::fmt;
use std::path::Path;

use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::TSigner;
use serde::Deserialize;

use super::names::{normalize_name, parse_name};
use super::DnsError;

/// Allowed clock difference for TSIG, in seconds (RFC 8945 recommends 300).
const TSIG_FUDGE: u16 = 300;

/// The TSIG algorithms drmesh signs with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum TsigAlgorithmName {
    #[default]
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    #[serde(rename = "hmac-sha384")]
    HmacSha384,
    #[serde(rename = "hmac-sha512")]
    HmacSha512,
}

impl TsigAlgorithmName {
    /// The algorithm as named in a BIND `key` statement.
    pub fn from_bind(name: &str) -> Option<Self> {
        match name.trim_end_matches('.').to_ascii_lowercase().as_str() {
            "hmac-sha256" => Some(Self::HmacSha256),
            "hmac-sha384" => Some(Self::HmacSha384),
            "hmac-sha512" => Some(Self::HmacSha512),
            _ => None,
        }
    }
}

impl fmt::Display for TsigAlgorithmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::HmacSha256 => "hmac-sha256",
            Self::HmacSha384 => "hmac-sha384",
            Self::HmacSha512 => "hmac-sha512",
        })
    }
}

/// A TSIG key: its name, algorithm and secret. `Debug` leaves the secret out.
#[derive(Clone)]
pub struct TsigKey {
    pub name: String,
    pub algorithm: TsigAlgorithmName,
    secret: Vec<u8>,
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl TsigKey {
    /// Reads the key `name` from `path`: either a bare base64 secret, or a BIND
    /// `key "NAME" { algorithm …; secret "…"; };` file as `tsig-keygen` writes it. For a
    /// BIND file the algorithm is the file's, and `algorithm`, when given, must agree;
    /// for a bare secret it is `algorithm`, by default hmac-sha256.
    pub fn load(
        path: &Path,
        name: &str,
        algorithm: Option<TsigAlgorithmName>,
    ) -> Result<TsigKey, DnsError> {
        let text = std::fs::read_to_string(path).map_err(|e| DnsError::Key {
            path: path.to_path_buf(),
            message: format!("read: {e}"),
        })?;
        Self::parse(&text, name, algorithm).map_err(|message| DnsError::Key {
            path: path.to_path_buf(),
            message,
        })
    }

    /// [`TsigKey::load`] on the file's text.
    pub fn parse(
        text: &str,
        name: &str,
        algorithm: Option<TsigAlgorithmName>,
    ) -> Result<TsigKey, String> {
        let wanted = normalize_name(name).map_err(|e| e.to_string())?;
        let tokens = tokenize(text)?;
        if !tokens.iter().any(|t| t == "key") {
            let secret: String = text.split_whitespace().collect();
            let secret = decode_secret(&secret)?;
            return Ok(TsigKey {
                name: wanted,
                algorithm: algorithm.unwrap_or_default(),
                secret,
            });
        }
        let keys = parse_bind_keys(&tokens)?;
        let mut names = Vec::new();
        for (key_name, key_alg, key_secret) in keys {
            if normalize_name(&key_name).ok().as_deref() != Some(wanted.as_str()) {
                names.push(key_name);
                continue;
            }
            let file_alg = TsigAlgorithmName::from_bind(&key_alg).ok_or_else(|| {
                format!("key {key_name:?} uses algorithm {key_alg:?}; drmesh supports hmac-sha256, hmac-sha384 and hmac-sha512")
            })?;
            if let Some(configured) = algorithm {
                if configured != file_alg {
                    return Err(format!(
                        "key {key_name:?} is {file_alg} in the file but tsig_algorithm says {configured}"
                    ));
                }
            }
            return Ok(TsigKey {
                name: wanted,
                algorithm: file_alg,
                secret: decode_secret(&key_secret)?,
            });
        }
        Err(format!(
            "no key named {name:?} in the file (it has {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ))
    }

    pub(super) fn signer(&self) -> Result<TSigner, DnsError> {
        let bad = |message: String| DnsError::Config(format!("TSIG key {}: {message}", self.name));
        let name = parse_name(&self.name)?;
        let algorithm = match self.algorithm {
            TsigAlgorithmName::HmacSha256 => TsigAlgorithm::HmacSha256,
            TsigAlgorithmName::HmacSha384 => TsigAlgorithm::HmacSha384,
            TsigAlgorithmName::HmacSha512 => TsigAlgorithm::HmacSha512,
        };
        TSigner::new(self.secret.clone(), algorithm, name, TSIG_FUDGE)
            .map_err(|e| bad(e.to_string()))
    }
}

fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let bytes = data_encoding::BASE64
        .decode(secret.trim().as_bytes())
        .map_err(|e| format!("the secret is not base64: {e}"))?;
    if bytes.len() < 16 {
        return Err(format!(
            "the secret is {} bytes; at least 16 are needed (make one with `tsig-keygen -a hmac-sha256 NAME`)",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// Splits named.conf-style text into words, quoted strings (without quotes) and the
/// punctuation `{`, `}`, `;`; drops `#`, `//` and `/* */` comments.
fn tokenize(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                let mut closed = false;
                for c in chars.by_ref() {
                    if prev == '*' && c == '/' {
                        closed = true;
                        break;
                    }
                    prev = c;
                }
                if !closed {
                    return Err("unterminated /* comment".into());
                }
            }
            '"' => {
                let mut s = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '"' {
                        closed = true;
                        break;
                    }
                    s.push(c);
                }
                if !closed {
                    return Err("unterminated quoted string".into());
                }
                out.push(s);
            }
            '{' | '}' | ';' => out.push(c.to_string()),
            c => {
                let mut s = c.to_string();
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || matches!(n, '{' | '}' | ';' | '"') {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                out.push(s);
            }
        }
    }
    Ok(out)
}

/// Every `key NAME { algorithm ALG; secret SECRET; };` statement: (name, algorithm,
/// secret). Other statements are skipped.
fn parse_bind_keys(tokens: &[String]) -> Result<Vec<(String, String, String)>, String> {
    let mut keys = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i] != "key" {
            i += 1;
            continue;
        }
        let name = tokens.get(i + 1).ok_or("`key` without a name")?.to_string();
        if tokens.get(i + 2).map(String::as_str) != Some("{") {
            return Err(format!("key {name:?}: expected `{{` after the name"));
        }
        i += 3;
        let (mut algorithm, mut secret) = (None, None);
        loop {
            match tokens.get(i).map(String::as_str) {
                None => return Err(format!("key {name:?}: missing `}}`")),
                Some("}") => {
                    i += 1;
                    break;
                }
                Some(word) => {
                    let value = tokens
                        .get(i + 1)
                        .ok_or_else(|| format!("key {name:?}: {word} without a value"))?;
                    if tokens.get(i + 2).map(String::as_str) != Some(";") {
                        return Err(format!("key {name:?}: expected `;` after {word}"));
                    }
                    match word {
                        "algorithm" => algorithm = Some(value.to_string()),
                        "secret" => secret = Some(value.to_string()),
                        other => return Err(format!("key {name:?}: unknown clause {other:?}")),
                    }
                    i += 3;
                }
            }
        }
        if tokens.get(i).map(String::as_str) == Some(";") {
            i += 1;
        }
        let algorithm = algorithm.ok_or_else(|| format!("key {name:?} has no algorithm"))?;
        let secret = secret.ok_or_else(|| format!("key {name:?} has no secret"))?;
        keys.push((name, algorithm, secret));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0IQ==";

    #[test]
    fn a_bare_base64_secret_is_read_with_the_configured_algorithm() {
        let key = TsigKey::parse(&format!("{SECRET}\n"), "drmesh-key", None).expect("key");
        assert_eq!(key.name, "drmesh-key.");
        assert_eq!(key.algorithm, TsigAlgorithmName::HmacSha256);
        let key = TsigKey::parse(SECRET, "k", Some(TsigAlgorithmName::HmacSha512)).expect("key");
        assert_eq!(key.algorithm, TsigAlgorithmName::HmacSha512);
        assert!(!format!("{key:?}").contains(SECRET));
        let err = TsigKey::parse("not base64!", "k", None).expect_err("bad");
        assert!(err.contains("base64"), "{err}");
        let err = TsigKey::parse("c2hvcnQ=", "k", None).expect_err("short");
        assert!(err.contains("at least 16"), "{err}");
    }

    #[test]
    fn a_bind_key_file_is_read() {
        let text = format!(
            "# made by tsig-keygen\nkey \"other\" {{\n\talgorithm hmac-sha512;\n\tsecret \"{SECRET}\";\n}};\n/* the one */\nkey \"drmesh-key\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{SECRET}\";\n}};\n"
        );
        let key = TsigKey::parse(&text, "drmesh-key", None).expect("key");
        assert_eq!(key.algorithm, TsigAlgorithmName::HmacSha256);
        let key = TsigKey::parse(&text, "other.", None).expect("key");
        assert_eq!(key.algorithm, TsigAlgorithmName::HmacSha512);
        let err = TsigKey::parse(&text, "drmesh-key", Some(TsigAlgorithmName::HmacSha512))
            .expect_err("mismatch");
        assert!(err.contains("tsig_algorithm"), "{err}");
        let err = TsigKey::parse(&text, "missing", None).expect_err("missing");
        assert!(err.contains("other, drmesh-key"), "{err}");
        let err = TsigKey::parse(
            "key \"k\" { algorithm hmac-md5; secret \"x\"; };",
            "k",
            None,
        )
        .expect_err("md5");
        assert!(err.contains("hmac-md5"), "{err}");
        let err = TsigKey::parse("key \"k\" { secret \"x\"; };", "k", None).expect_err("no alg");
        assert!(err.contains("no algorithm"), "{err}");
    }
}
