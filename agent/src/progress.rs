//! How long work reports how far it got, whichever job it is (backups, restores,
//! verifications, retention, copies): a callback the command stream forwards.

use std::sync::Arc;

/// Reports progress: percent (0..=100) and a message.
pub type ProgressFn = Arc<dyn Fn(f32, String) + Send + Sync>;
