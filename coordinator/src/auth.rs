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

/// The callers this coordinator authenticated lately, by token hash: while the store
/// does not answer (etcd lost its quorum), a read by a known token is still answered,
/// so the status can say why nothing is decided. Bounded in size and age; a token the
/// store says is unknown is forgotten at once.
pub struct RecentCallers {
    seen: parking_lot::Mutex<std::collections::HashMap<String, (Caller, std::time::Instant)>>,
}

/// How long a caller is remembered for reads without the store.
pub const RECENT_CALLER_TTL: std::time::Duration = std::time::Duration::from_secs(15 * 60);
const RECENT_CALLERS_MAX: usize = 1024;

impl Default for RecentCallers {
    fn default() -> Self {
        Self {
            seen: parking_lot::Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl RecentCallers {
    pub fn remember(&self, secret: &str, caller: &Caller, now: std::time::Instant) {
        let mut seen = self.seen.lock();
        if seen.len() >= RECENT_CALLERS_MAX {
            seen.retain(|_, (_, at)| now.duration_since(*at) < RECENT_CALLER_TTL);
            if seen.len() >= RECENT_CALLERS_MAX {
                if let Some(oldest) = seen
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| k.clone())
                {
                    seen.remove(&oldest);
                }
            }
        }
        seen.insert(hash(secret), (caller.clone(), now));
    }

    pub fn forget(&self, secret: &str) {
        self.seen.lock().remove(&hash(secret));
    }

    /// The caller behind `secret` if it was authenticated within [`RECENT_CALLER_TTL`].
    pub fn recall(&self, secret: &str, now: std::time::Instant) -> Option<Caller> {
        let seen = self.seen.lock();
        let (caller, at) = seen.get(&hash(secret))?;
        (now.duration_since(*at) < RECENT_CALLER_TTL).then(|| caller.clone())
    }
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

    #[test]
    fn recent_callers_are_recalled_for_a_while_and_forgotten_when_unknown() {
        let callers = RecentCallers::default();
        let t0 = std::time::Instant::now();
        let c = Caller {
            token_id: "tok_1".into(),
            role: Role::Viewer,
            name: None,
        };
        assert_eq!(callers.recall("drm_a", t0), None);
        callers.remember("drm_a", &c, t0);
        assert_eq!(callers.recall("drm_a", t0), Some(c.clone()));
        assert_eq!(callers.recall("drm_b", t0), None);
        assert_eq!(callers.recall("drm_a", t0 + RECENT_CALLER_TTL), None);
        callers.forget("drm_a");
        assert_eq!(callers.recall("drm_a", t0), None);
        // Bounded: the oldest goes first.
        for i in 0..RECENT_CALLERS_MAX + 10 {
            callers.remember(
                &format!("drm_{i}"),
                &c,
                t0 + std::time::Duration::from_millis(i as u64),
            );
        }
        assert!(callers.seen.lock().len() <= RECENT_CALLERS_MAX);
        assert_eq!(callers.recall("drm_0", t0), None);
        assert!(callers
            .recall(&format!("drm_{}", RECENT_CALLERS_MAX + 9), t0)
            .is_some());
    }
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
