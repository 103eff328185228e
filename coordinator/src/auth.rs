//! API tokens: random secrets shown once, stored as SHA-256 hashes with a role.
//!
//! A token has 256 bits of entropy, so a plain SHA-256 is enough to make the stored hash
//! useless to a thief (no password-style stretching needed).

use chrono::{DateTime, Utc};
use drmesh_protocol::api::{CreatedToken, Role};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{Namespace, Store, StoreError, StoreExt};

/// Every token starts with this, so a leaked one is easy to grep for.
pub const TOKEN_PREFIX: &str = "drm_";

/// What the store keeps about a token (never the secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: String,
    pub role: Role,
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The identity behind a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub token_id: String,
    pub role: Role,
    pub name: Option<String>,
}

impl Caller {
    /// How the caller appears in the audit log.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("{} ({name})", self.token_id),
            None => self.token_id.clone(),
        }
    }
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Makes a new token, stores its hash, and returns the secret (shown once).
pub fn create_token(
    store: &dyn Store,
    role: Role,
    name: Option<String>,
) -> Result<CreatedToken, StoreError> {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let secret = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    let hashed = hash(&secret);
    let record = TokenRecord {
        id: format!("tok_{}", &hashed[..12]),
        role,
        name,
        created_at: Utc::now(),
    };
    store.put_json(Namespace::Tokens, &hashed, &record)?;
    Ok(CreatedToken {
        id: record.id,
        role,
        name: record.name,
        token: secret,
    })
}

/// Looks a presented secret up. `Ok(None)` for an unknown token.
pub fn authenticate(store: &dyn Store, secret: &str) -> Result<Option<Caller>, StoreError> {
    if !secret.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    let record: Option<TokenRecord> = store.get_json(Namespace::Tokens, &hash(secret))?;
    Ok(record.map(|r| Caller {
        token_id: r.id,
        role: r.role,
        name: r.name,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedbStore;

    #[test]
    fn tokens_authenticate_with_their_role_and_are_stored_hashed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(&dir.path().join("s.redb")).expect("open");
        let t = create_token(&store, Role::Operator, Some("ci".into())).expect("create");
        assert!(t.token.starts_with(TOKEN_PREFIX));
        let caller = authenticate(&store, &t.token)
            .expect("auth")
            .expect("known");
        assert_eq!(caller.role, Role::Operator);
        assert_eq!(caller.token_id, t.id);
        assert_eq!(authenticate(&store, "drm_nope").expect("auth"), None);
        assert_eq!(authenticate(&store, "").expect("auth"), None);
        for (key, value) in store.scan(Namespace::Tokens, "").expect("scan") {
            assert!(!key.contains(&t.token));
            assert!(!String::from_utf8_lossy(&value).contains(&t.token));
        }
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    }
}
