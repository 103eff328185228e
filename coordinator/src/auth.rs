//! API tokens: random secrets shown once, stored as SHA-256 hashes with a role, a name,
//! an optional expiry, the time of their last use and, once revoked, when and by whom.
//! An expired or revoked token authenticates nothing; its record stays, for the list
//! and the audit.
//!
//! A token has 256 bits of entropy, so a plain SHA-256 is enough to make the stored hash
//! useless to a thief (no password-style stretching needed).

use chrono::{DateTime, Utc};
use drmesh_protocol::api::{CreatedToken, Role, TokenInfo, TokenState};
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
}

impl TokenRecord {
    pub fn state(&self, now: DateTime<Utc>) -> TokenState {
        if self.revoked_at.is_some() {
            TokenState::Revoked
        } else if self.expires_at.is_some_and(|t| t <= now) {
            TokenState::Expired
        } else {
            TokenState::Active
        }
    }

    pub fn info(&self, now: DateTime<Utc>) -> TokenInfo {
        TokenInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            role: self.role,
            state: self.state(now),
            created_at: self.created_at,
            expires_at: self.expires_at,
            last_used_at: self.last_used_at,
            revoked_at: self.revoked_at,
            revoked_by: self.revoked_by.clone(),
        }
    }
}

/// How long a token may be made for, at least and at most.
pub const TOKEN_TTL_RANGE: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(10 * 366 * 24 * 3600),
);

/// A `ttl` as a token request gives it (`"90d"`), checked against [`TOKEN_TTL_RANGE`].
pub fn parse_ttl(text: &str) -> Result<std::time::Duration, String> {
    let ttl = humantime::parse_duration(text.trim())
        .map_err(|e| format!("ttl {text:?} is not a duration such as \"90d\" or \"12h\": {e}"))?;
    let (min, max) = TOKEN_TTL_RANGE;
    if ttl < min || ttl > max {
        return Err(format!(
            "ttl {text:?} must be between {} and {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(ttl)
}

/// How often a token's last use is written (at most): a busy token costs one store
/// write a minute, not one a request.
pub const LAST_USED_RESOLUTION: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// The identity behind a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub token_id: String,
    pub role: Role,
    pub name: Option<String>,
    /// When its token expires, if it does.
    pub expires_at: Option<DateTime<Utc>>,
}

impl Caller {
    /// How the caller appears in the audit log.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("{} ({name})", self.token_id),
            None => self.token_id.clone(),
        }
    }

    /// Who did something, as records say it (`acknowledgedBy`, `revokedBy`): the token's
    /// name, else its id.
    pub fn who(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.token_id.clone())
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
    create_expiring_token(store, role, name, None)
}

/// As [`create_token`], accepted until `expires_at` when given.
pub fn create_expiring_token(
    store: &dyn Store,
    role: Role,
    name: Option<String>,
    expires_at: Option<DateTime<Utc>>,
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
        expires_at,
        last_used_at: None,
        revoked_at: None,
        revoked_by: None,
    };
    store.put_json(Namespace::Tokens, &hashed, &record)?;
    Ok(CreatedToken {
        id: record.id,
        role,
        name: record.name,
        token: secret,
        expires_at,
    })
}

/// Every token, oldest first.
pub fn list_tokens(store: &dyn Store) -> Result<Vec<TokenRecord>, StoreError> {
    let mut all: Vec<TokenRecord> = store
        .scan(Namespace::Tokens, "")?
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect();
    all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Ok(all)
}

/// What revoking a token did.
#[derive(Debug)]
pub enum Revoked {
    /// Revoked now, or before (the record as it stands).
    Done(TokenRecord),
    NotFound,
}

/// Revokes the token `id` (`tok_…`), in one transaction: from then on it
/// authenticates nothing. Revoking a revoked token changes nothing.
pub fn revoke_token(
    store: &dyn Store,
    id: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Revoked, StoreError> {
    // The id is "tok_" and the first 12 hex digits of the key.
    let Some(prefix) = id.strip_prefix("tok_").filter(|p| {
        p.len() == 12
            && p.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    }) else {
        return Ok(Revoked::NotFound);
    };
    store.atomically(|tx| {
        for (key, value) in tx.scan(Namespace::Tokens, prefix)? {
            let Ok(mut record) = serde_json::from_slice::<TokenRecord>(&value) else {
                continue;
            };
            if record.id != id {
                continue;
            }
            if record.revoked_at.is_none() {
                record.revoked_at = Some(now);
                record.revoked_by = Some(by.to_string());
                tx.put_json(Namespace::Tokens, &key, &record)?;
            }
            return Ok(Revoked::Done(record));
        }
        Ok(Revoked::NotFound)
    })
}

/// Writes that the token behind `secret` was used at `now`, unless written less than
/// [`LAST_USED_RESOLUTION`] before (read in the same transaction, so a revocation at the
/// same moment is never undone).
pub fn note_use(store: &dyn Store, secret: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
    let key = hash(secret);
    store.atomically(|tx| {
        let Some(mut record) = tx.get_json::<TokenRecord>(Namespace::Tokens, &key)? else {
            return Ok(());
        };
        if record
            .last_used_at
            .is_some_and(|t| now - t < LAST_USED_RESOLUTION)
        {
            return Ok(());
        }
        record.last_used_at = Some(now);
        tx.put_json(Namespace::Tokens, &key, &record)
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

    /// The caller behind `secret` if it was authenticated within [`RECENT_CALLER_TTL`]
    /// and its token has not expired since.
    pub fn recall(&self, secret: &str, now: std::time::Instant) -> Option<Caller> {
        let seen = self.seen.lock();
        let (caller, at) = seen.get(&hash(secret))?;
        (now.duration_since(*at) < RECENT_CALLER_TTL
            && caller.expires_at.is_none_or(|t| t > Utc::now()))
        .then(|| caller.clone())
    }
}

/// What a presented secret is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authentication {
    Known {
        caller: Caller,
        /// When it was last written to have been used.
        last_used_at: Option<DateTime<Utc>>,
    },
    Unknown,
    Expired {
        id: String,
        at: DateTime<Utc>,
    },
    Revoked {
        id: String,
        at: DateTime<Utc>,
    },
}

/// Looks a presented secret up, as of `now`.
pub fn authenticate(
    store: &dyn Store,
    secret: &str,
    now: DateTime<Utc>,
) -> Result<Authentication, StoreError> {
    if !secret.starts_with(TOKEN_PREFIX) {
        return Ok(Authentication::Unknown);
    }
    let Some(r) = store.get_json::<TokenRecord>(Namespace::Tokens, &hash(secret))? else {
        return Ok(Authentication::Unknown);
    };
    Ok(match (r.state(now), r.revoked_at, r.expires_at) {
        (TokenState::Revoked, Some(at), _) => Authentication::Revoked { id: r.id, at },
        (TokenState::Expired, _, Some(at)) => Authentication::Expired { id: r.id, at },
        _ => Authentication::Known {
            caller: Caller {
                token_id: r.id,
                role: r.role,
                name: r.name,
                expires_at: r.expires_at,
            },
            last_used_at: r.last_used_at,
        },
    })
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
            expires_at: None,
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
        let now = Utc::now();
        let Authentication::Known { caller, .. } =
            authenticate(&store, &t.token, now).expect("auth")
        else {
            panic!("not known")
        };
        assert_eq!(caller.role, Role::Operator);
        assert_eq!(caller.token_id, t.id);
        assert_eq!(
            authenticate(&store, "drm_nope", now).expect("auth"),
            Authentication::Unknown
        );
        assert_eq!(
            authenticate(&store, "", now).expect("auth"),
            Authentication::Unknown
        );
        for (key, value) in store.scan(Namespace::Tokens, "").expect("scan") {
            assert!(!key.contains(&t.token));
            assert!(!String::from_utf8_lossy(&value).contains(&t.token));
        }
    }

    #[test]
    fn an_expired_or_revoked_token_authenticates_nothing_and_its_use_is_noted_once_a_minute() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(&dir.path().join("s.redb")).expect("open");
        let t0 = Utc::now();
        let ttl = chrono::TimeDelta::seconds(10);
        let t = create_expiring_token(&store, Role::Viewer, Some("x".into()), Some(t0 + ttl))
            .expect("create");
        assert!(matches!(
            authenticate(&store, &t.token, t0).expect("auth"),
            Authentication::Known { .. }
        ));
        assert_eq!(
            authenticate(&store, &t.token, t0 + ttl).expect("auth"),
            Authentication::Expired {
                id: t.id.clone(),
                at: t0 + ttl
            }
        );

        note_use(&store, &t.token, t0).expect("note");
        note_use(&store, &t.token, t0 + chrono::TimeDelta::seconds(30)).expect("note");
        let last = |s: &RedbStore| list_tokens(s).expect("list")[0].last_used_at;
        assert_eq!(
            last(&store),
            Some(t0),
            "within the minute: not written again"
        );
        note_use(&store, &t.token, t0 + LAST_USED_RESOLUTION).expect("note");
        assert_eq!(last(&store), Some(t0 + LAST_USED_RESOLUTION));

        let revoked_at = t0 + chrono::TimeDelta::seconds(1);
        assert!(matches!(
            revoke_token(&store, &t.id, "admin", revoked_at).expect("revoke"),
            Revoked::Done(_)
        ));
        // A use noted after the revocation keeps it.
        note_use(&store, &t.token, t0 + chrono::TimeDelta::seconds(200)).expect("note");
        assert_eq!(
            authenticate(&store, &t.token, t0).expect("auth"),
            Authentication::Revoked {
                id: t.id.clone(),
                at: revoked_at
            }
        );
        let Revoked::Done(again) =
            revoke_token(&store, &t.id, "someone else", t0 + ttl).expect("revoke")
        else {
            panic!("not found")
        };
        assert_eq!(again.revoked_at, Some(revoked_at));
        assert_eq!(again.revoked_by.as_deref(), Some("admin"));
        for id in ["tok_000000000000", "tok_", "nonsense", "tok_ZZZZZZZZZZZZ"] {
            assert!(matches!(
                revoke_token(&store, id, "admin", t0).expect("revoke"),
                Revoked::NotFound
            ));
        }
        assert_eq!(
            list_tokens(&store).expect("list")[0].state(t0),
            TokenState::Revoked
        );
    }

    #[test]
    fn a_ttl_is_a_duration_within_its_range() {
        assert_eq!(
            parse_ttl("90d"),
            Ok(std::time::Duration::from_secs(90 * 86_400))
        );
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("soon").is_err());
        assert!(parse_ttl("11y").is_err());
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    }
}
