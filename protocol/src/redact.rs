//! Secrets kept out of what people read (alerts, logs): a URL shown only as far as its
//! host ([`url`]), and a text's passwords, URL credentials and secret-looking query
//! values masked ([`text`]).

/// What a masked value is shown as.
pub const MASK: &str = "***";

/// `url` as far as its host and port: no credentials, and `/…` for any path or query
/// (a Slack webhook's secret is its path).
pub fn url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return MASK.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let tail = if end < rest.len() && rest[end..] != *"/" {
        "/…"
    } else {
        ""
    };
    format!("{scheme}://{host}{tail}")
}

/// Keys whose values are masked where they appear as `key=value` (a libpq conninfo, a
/// URL's query), matched without regard to case.
const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "token",
    "access_token",
    "secret",
    "key",
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
];

/// `text` with passwords, URL credentials (`scheme://user:pass@host`) and secret-looking
/// `key=value` values masked.
pub fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // URL credentials first: `://user:pass@` becomes `://***@`.
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(after.len());
        match after[..end].rfind('@') {
            Some(at) => {
                out.push_str(MASK);
                out.push_str(&after[at..end]);
            }
            None => out.push_str(&after[..end]),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    mask_pairs(&out)
}

/// Masks the value of every `key=value` whose key is a secret's.
fn mask_pairs(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while let Some(eq) = text[i..].find('=').map(|e| e + i) {
        // The key: the word before `=`.
        let start = text[..eq]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map_or(0, |s| s + 1);
        let key = text[start..eq].to_ascii_lowercase();
        let is_secret = SECRET_KEYS
            .iter()
            .any(|k| key == *k || key.ends_with(&format!("_{k}")));
        if !is_secret {
            i = eq + 1;
            continue;
        }
        let mut end = eq + 1;
        let quote = bytes
            .get(end)
            .copied()
            .filter(|q| *q == b'\'' || *q == b'"');
        if let Some(q) = quote {
            end += 1;
            while end < bytes.len() && bytes[end] != q {
                end += 1;
            }
            end = (end + 1).min(bytes.len());
        } else {
            while end < bytes.len()
                && !(bytes[end].is_ascii_whitespace()
                    || matches!(bytes[end], b'&' | b'"' | b',' | b';'))
            {
                end += 1;
            }
        }
        out.push_str(&text[copied..eq + 1]);
        out.push_str(MASK);
        copied = end;
        i = end.max(eq + 1);
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_as_far_as_its_host() {
        assert_eq!(
            url("https://hooks.slack.com/services/T000/B000/XXXX"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            url("http://user:pw@10.0.0.1:8080/x?token=1"),
            "http://10.0.0.1:8080/…"
        );
        assert_eq!(url("https://ops.example.com/"), "https://ops.example.com");
        assert_eq!(url("https://ops.example.com"), "https://ops.example.com");
        assert_eq!(url("not a url"), MASK);
    }

    #[test]
    fn passwords_credentials_and_secret_values_are_masked() {
        assert_eq!(
            text("host=db port=5432 user=app password=s3cr3t dbname=x"),
            "host=db port=5432 user=app password=*** dbname=x"
        );
        assert_eq!(text("password='a b c' user=x"), "password=*** user=x");
        assert_eq!(
            text("postgresql://app:s3cr3t@db:5432/x failed"),
            "postgresql://***@db:5432/x failed"
        );
        assert_eq!(
            text("GET https://s3.example/b?X-Amz-Signature=abc&part=1 failed"),
            "GET https://s3.example/b?X-Amz-Signature=***&part=1 failed"
        );
        assert_eq!(text("api_token=abc, ok"), "api_token=***, ok");
        let plain = "backup bk_1 took 3 s (level=full, size=10)";
        assert_eq!(text(plain), plain);
        assert_eq!(text(""), "");
        assert_eq!(text("a=b=c password="), "a=b=c password=***");
    }
}
