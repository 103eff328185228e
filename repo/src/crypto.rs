//! Encryption at rest: AES-256-GCM with a random master key, itself wrapped by a key
//! derived from a key file (SHA-256) or a passphrase (Argon2id, memory-hard).
//!
//! Nonces are 96 random bits per sealed object. With at most a few billion objects per
//! repository the chance of a repeat stays far below 2^-32, the NIST bound for random
//! GCM nonces.

pub use ring::aead::NONCE_LEN;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::RepoError;

/// Where the key comes from when a repository is opened or created.
#[derive(Clone, Default)]
pub enum KeySource {
    /// No encryption (an encrypted repository then refuses to open).
    #[default]
    None,
    /// A file holding a high-entropy secret (e.g. 32 random bytes, hex).
    KeyFile(std::path::PathBuf),
    /// A passphrase, stretched with Argon2id.
    Passphrase(String),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::None => f.write_str("None"),
            KeySource::KeyFile(p) => write!(f, "KeyFile({})", p.display()),
            KeySource::Passphrase(_) => f.write_str("Passphrase(<redacted>)"),
        }
    }
}

/// Encryption parameters stored (in clear) in the repository's config object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionConfig {
    pub cipher: String,
    /// `keyfile` or `argon2id`.
    pub kdf: String,
    pub salt: String,
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
    /// The master key sealed with the key-encryption key: hex of nonce || ciphertext.
    pub wrapped_key: String,
}

/// The master key of an open repository.
pub struct MasterKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

fn random<const N: usize>() -> Result<[u8; N], RepoError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| RepoError::Crypto("system random generator failed".into()))?;
    Ok(out)
}

fn aead_key(bytes: &[u8; 32]) -> Result<LessSafeKey, RepoError> {
    let unbound = UnboundKey::new(&AES_256_GCM, bytes)
        .map_err(|_| RepoError::Crypto("bad key length".into()))?;
    Ok(LessSafeKey::new(unbound))
}

fn seal_with(key: &LessSafeKey, plain: &[u8]) -> Result<Vec<u8>, RepoError> {
    let nonce_bytes = random::<NONCE_LEN>()?;
    let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + 16);
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(plain);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::empty(),
            &mut out[NONCE_LEN..],
        )
        .map_err(|_| RepoError::Crypto("encryption failed".into()))?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

fn open_with(key: &LessSafeKey, sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN + 16 {
        return None;
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sealed[..NONCE_LEN]);
    let mut buf = sealed[NONCE_LEN..].to_vec();
    let plain = key
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
        .ok()?;
    let n = plain.len();
    buf.truncate(n);
    Some(buf)
}

impl MasterKey {
    /// Encrypts `buf[NONCE_LEN..]` in place: fills `buf[..NONCE_LEN]` with a fresh nonce
    /// and appends the tag. The caller reserves the nonce bytes at the front.
    pub fn seal_in_place(&self, buf: &mut Vec<u8>) -> Result<(), RepoError> {
        if buf.len() < NONCE_LEN {
            return Err(RepoError::Crypto("no room for the nonce".into()));
        }
        let nonce_bytes = random::<NONCE_LEN>()?;
        buf[..NONCE_LEN].copy_from_slice(&nonce_bytes);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::empty(),
                &mut buf[NONCE_LEN..],
            )
            .map_err(|_| RepoError::Crypto("encryption failed".into()))?;
        buf.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Decrypts `nonce || ciphertext || tag` in place; returns the plaintext's range, or
    /// `None` when the data was altered or sealed with another key.
    pub fn open_in_place(&self, buf: &mut [u8]) -> Option<std::ops::Range<usize>> {
        if buf.len() < NONCE_LEN + 16 {
            return None;
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&buf[..NONCE_LEN]);
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut buf[NONCE_LEN..],
            )
            .ok()?;
        Some(NONCE_LEN..NONCE_LEN + plain.len())
    }

    /// Encrypts and authenticates.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, RepoError> {
        seal_with(&self.key, plain)
    }

    /// Decrypts; `None` when the data was altered or sealed with another key.
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        open_with(&self.key, sealed)
    }
}

/// Parameters for passphrases: 64 MiB, 3 passes (OWASP's Argon2id recommendation).
const M_COST_KIB: u32 = 64 * 1024;
const T_COST: u32 = 3;
const P_COST: u32 = 1;

fn key_encryption_key(source: &KeySource, cfg: &EncryptionConfig) -> Result<[u8; 32], RepoError> {
    let salt = hex::decode(&cfg.salt).map_err(|_| RepoError::Corrupt("config: bad salt".into()))?;
    match (source, cfg.kdf.as_str()) {
        (KeySource::KeyFile(path), "keyfile") => {
            let secret = std::fs::read(path).map_err(|e| {
                RepoError::Key(format!("read key file {}: {e}", path.display()))
            })?;
            let secret = String::from_utf8_lossy(&secret).trim().as_bytes().to_vec();
            if secret.len() < 16 {
                return Err(RepoError::Key(format!(
                    "key file {} holds fewer than 16 bytes",
                    path.display()
                )));
            }
            let mut h = Sha256::new();
            h.update(b"drmesh repo key file v1");
            h.update(&salt);
            h.update(&secret);
            Ok(h.finalize().into())
        }
        (KeySource::Passphrase(pass), "argon2id") => {
            let params = argon2::Params::new(cfg.m_cost_kib, cfg.t_cost, cfg.p_cost, Some(32))
                .map_err(|e| RepoError::Corrupt(format!("config: argon2 parameters: {e}")))?;
            let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let mut out = [0u8; 32];
            argon
                .hash_password_into(pass.as_bytes(), &salt, &mut out)
                .map_err(|e| RepoError::Crypto(format!("argon2: {e}")))?;
            Ok(out)
        }
        (KeySource::None, _) => Err(RepoError::Key(
            "the repository is encrypted: give its key file (--key-file / DRMESH_REPO_KEY_FILE) or passphrase (DRMESH_REPO_PASSPHRASE)".into(),
        )),
        (KeySource::KeyFile(_), kdf) | (KeySource::Passphrase(_), kdf) => Err(RepoError::Key(format!(
            "the repository's key is a {kdf}; give that kind of key"
        ))),
    }
}

/// Makes a new master key and the config that wraps it for `source`.
pub fn create(source: &KeySource) -> Result<Option<(EncryptionConfig, MasterKey)>, RepoError> {
    let kdf = match source {
        KeySource::None => return Ok(None),
        KeySource::KeyFile(_) => "keyfile",
        KeySource::Passphrase(p) => {
            if p.len() < 8 {
                return Err(RepoError::Key(
                    "passphrase shorter than 8 characters".into(),
                ));
            }
            "argon2id"
        }
    };
    let mut cfg = EncryptionConfig {
        cipher: "aes-256-gcm".into(),
        kdf: kdf.into(),
        salt: hex::encode(random::<16>()?),
        m_cost_kib: M_COST_KIB,
        t_cost: T_COST,
        p_cost: P_COST,
        wrapped_key: String::new(),
    };
    let kek = aead_key(&key_encryption_key(source, &cfg)?)?;
    let master = random::<32>()?;
    cfg.wrapped_key = hex::encode(seal_with(&kek, &master)?);
    Ok(Some((
        cfg,
        MasterKey {
            key: aead_key(&master)?,
        },
    )))
}

/// Unwraps the master key; a wrong key is an error, never a fallback to plaintext.
pub fn unlock(source: &KeySource, cfg: &EncryptionConfig) -> Result<MasterKey, RepoError> {
    if cfg.cipher != "aes-256-gcm" {
        return Err(RepoError::Corrupt(format!("unknown cipher {}", cfg.cipher)));
    }
    let kek = aead_key(&key_encryption_key(source, cfg)?)?;
    let wrapped = hex::decode(&cfg.wrapped_key)
        .map_err(|_| RepoError::Corrupt("config: bad wrapped key".into()))?;
    let master = open_with(&kek, &wrapped)
        .ok_or_else(|| RepoError::Key("wrong key or passphrase for this repository".into()))?;
    let master: [u8; 32] = master
        .try_into()
        .map_err(|_| RepoError::Corrupt("config: wrapped key has the wrong size".into()))?;
    Ok(MasterKey {
        key: aead_key(&master)?,
    })
}
