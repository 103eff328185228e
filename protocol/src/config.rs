//! What the agent's and the coordinator's configuration files share: the error a load
//! fails with, the log format key, and reading and parsing a TOML file.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Log output format (`log_format`): `text` (the default) or `json`, one object a line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The text of the configuration file at `path`.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// `text`, the file at `path`, parsed as TOML into `T` (an unknown key is an error where
/// `T` denies them).
pub fn parse_toml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        log_format: Option<LogFormat>,
    }

    #[test]
    fn a_file_parses_and_errors_name_the_file() {
        let path = Path::new("/etc/drmesh/x.toml");
        let f: File = parse_toml("log_format = \"json\"", path).expect("parses");
        assert_eq!(f.log_format, Some(LogFormat::Json));
        let err = parse_toml::<File>("log_fromat = \"json\"", path).expect_err("a typo is refused");
        assert!(
            err.to_string().starts_with("parse /etc/drmesh/x.toml: "),
            "{err}"
        );
        let err = read(Path::new("/nonexistent/drmesh.toml")).expect_err("no such file");
        assert!(
            err.to_string().contains("/nonexistent/drmesh.toml"),
            "{err}"
        );
    }
}
