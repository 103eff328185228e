//! The drmesh certificate authority: `drmesh ca init` and `drmesh ca issue`.
//!
//! Agent certificates carry the agent id as subject common name and the region as
//! organizational unit, with organization `drmesh agent` and the client-auth key usage.
//! The coordinator reads the identity from there ([`agent_identity`]) and never from what
//! the agent says.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::ids::{AgentId, IdError, RegionId};

/// Organization written into every agent certificate.
pub const AGENT_ORG: &str = "drmesh agent";
/// Organization written into every coordinator certificate.
pub const COORDINATOR_ORG: &str = "drmesh coordinator";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path} already exists; refusing to overwrite a CA (remove it first)")]
    CaExists { path: PathBuf },
    #[error("no CA in {dir}: run `drmesh ca init --dir {dir}` first")]
    NoCa { dir: PathBuf },
    #[error("certificate is not valid X.509: {0}")]
    Parse(String),
    #[error("certificate is not a drmesh agent certificate: {0}")]
    NotAgent(String),
    #[error("certificate names a bad identity: {0}")]
    BadIdentity(#[from] IdError),
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> PkiError + 'a {
    move |source| PkiError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Paths of a PEM certificate and its private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The files of a CA directory.
pub fn ca_files(dir: &Path) -> CertFiles {
    CertFiles {
        cert: dir.join("ca.pem"),
        key: dir.join("ca.key"),
    }
}

/// Where `issue_agent` writes an agent's files.
pub fn agent_files(dir: &Path, id: &AgentId) -> CertFiles {
    CertFiles {
        cert: dir.join(format!("agent-{id}.pem")),
        key: dir.join(format!("agent-{id}.key")),
    }
}

/// Where `issue_coordinator` writes the coordinator's files.
pub fn coordinator_files(dir: &Path) -> CertFiles {
    CertFiles {
        cert: dir.join("coordinator.pem"),
        key: dir.join("coordinator.key"),
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("write", path))?;
    f.write_all(contents.as_bytes())
        .map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("sync", path))
}

fn write_public(path: &Path, contents: &str) -> Result<(), PkiError> {
    fs::write(path, contents).map_err(io_err("write", path))
}

/// Validity window of an issued certificate.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From one hour ago (clock skew) for `days` days.
    pub fn days(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }
}

/// Creates a new CA (`ca.pem`, `ca.key` with mode 0600) in `dir`. Refuses to overwrite.
pub fn init_ca(dir: &Path, common_name: &str) -> Result<CertFiles, PkiError> {
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let files = ca_files(dir);
    if files.cert.exists() || files.key.exists() {
        return Err(PkiError::CaExists { path: files.cert });
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "drmesh");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let validity = Validity::days(3650);
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params.self_signed(&key)?;
    write_private(&files.key, &key.serialize_pem())?;
    write_public(&files.cert, &cert.pem())?;
    Ok(files)
}

fn load_issuer(ca_dir: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let files = ca_files(ca_dir);
    if !files.cert.exists() || !files.key.exists() {
        return Err(PkiError::NoCa {
            dir: ca_dir.to_path_buf(),
        });
    }
    let cert_pem = fs::read_to_string(&files.cert).map_err(io_err("read", &files.cert))?;
    let key_pem = fs::read_to_string(&files.key).map_err(io_err("read", &files.key))?;
    let key = KeyPair::from_pem(&key_pem)?;
    Ok(Issuer::from_ca_cert_pem(&cert_pem, key)?)
}

fn issue(
    ca_dir: &Path,
    mut params: CertificateParams,
    validity: Validity,
    out: &CertFiles,
) -> Result<(), PkiError> {
    let issuer = load_issuer(ca_dir)?;
    let key = KeyPair::generate()?;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    if let Some(parent) = out.cert.parent() {
        fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    write_private(&out.key, &key.serialize_pem())?;
    write_public(&out.cert, &cert.pem())
}

/// Issues an agent certificate signed by the CA in `ca_dir`, written to `out`.
pub fn issue_agent(
    ca_dir: &Path,
    id: &AgentId,
    region: &RegionId,
    validity: Validity,
    out: &CertFiles,
) -> Result<(), PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, id.as_str());
    dn.push(DnType::OrganizationName, AGENT_ORG);
    dn.push(DnType::OrganizationalUnitName, region.as_str());
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    issue(ca_dir, params, validity, out)
}

/// Issues the coordinator's server certificate for `hosts` (DNS names or IP addresses).
pub fn issue_coordinator(
    ca_dir: &Path,
    hosts: &[String],
    validity: Validity,
    out: &CertFiles,
) -> Result<(), PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    for host in hosts {
        let san = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.clone().try_into()?),
        };
        params.subject_alt_names.push(san);
    }
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        hosts.first().map(String::as_str).unwrap_or("coordinator"),
    );
    dn.push(DnType::OrganizationName, COORDINATOR_ORG);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    issue(ca_dir, params, validity, out)
}

/// The identity an agent certificate proves. Call only on a certificate that the TLS layer
/// has already verified against the CA.
pub fn agent_identity(der: &[u8]) -> Result<(AgentId, RegionId), PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let subject = cert.subject();
    let first = |attrs: Vec<&x509_parser::x509::AttributeTypeAndValue>, what: &str| {
        attrs
            .first()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string)
            .ok_or_else(|| PkiError::NotAgent(format!("no {what} in the subject")))
    };
    let org = first(subject.iter_organization().collect(), "organization")?;
    if org != AGENT_ORG {
        return Err(PkiError::NotAgent(format!(
            "organization is {org:?}, not {AGENT_ORG:?}"
        )));
    }
    let id = first(subject.iter_common_name().collect(), "common name")?;
    let region = first(
        subject.iter_organizational_unit().collect(),
        "organizational unit (region)",
    )?;
    Ok((AgentId::new(id)?, RegionId::new(region)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_agent_certificates_carry_the_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(dir.path(), "test CA").expect("init");
        assert!(matches!(
            init_ca(dir.path(), "again"),
            Err(PkiError::CaExists { .. })
        ));
        let id = AgentId::new("db-1").expect("id");
        let region = RegionId::new("eu-west-1").expect("region");
        let files = agent_files(dir.path(), &id);
        issue_agent(dir.path(), &id, &region, Validity::days(1), &files).expect("issue");
        let pem = fs::read(&files.cert).expect("read");
        let der = crate::tls::load_certs_pem(&pem).expect("pem");
        assert_eq!(agent_identity(&der[0]).expect("identity"), (id, region));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&files.key).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_coordinator_certificate_is_not_an_agent() {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(dir.path(), "test CA").expect("init");
        let files = coordinator_files(dir.path());
        issue_coordinator(
            dir.path(),
            &["localhost".into(), "127.0.0.1".into()],
            Validity::days(1),
            &files,
        )
        .expect("issue");
        let der = crate::tls::load_certs_pem(&fs::read(&files.cert).expect("read")).expect("pem");
        assert!(matches!(
            agent_identity(&der[0]),
            Err(PkiError::NotAgent(_))
        ));
    }

    #[test]
    fn issuing_without_a_ca_says_how_to_make_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = issue_coordinator(
            dir.path(),
            &["localhost".into()],
            Validity::days(1),
            &coordinator_files(dir.path()),
        )
        .expect_err("no CA");
        assert!(err.to_string().contains("drmesh ca init"), "{err}");
    }
}
