//! What the agent has observed of its host, shared by the tasks that report it: the
//! probe task writes, the heartbeat loop and the mesh's lease watcher read.

use drmesh_protocol::PgStatus;
use parking_lot::Mutex;

/// What the agent knows that goes into heartbeats, updated by the probe task.
#[derive(Default)]
pub struct Observed {
    pub postgres: Mutex<Option<PgStatus>>,
    pub last_backup_ids: Mutex<Vec<String>>,
}

impl Observed {
    /// A backup finished: it heads the ids the next heartbeats carry (five at most).
    pub fn remember_backup(&self, id: &str) {
        let mut ids = self.last_backup_ids.lock();
        ids.insert(0, id.to_string());
        ids.truncate(5);
    }
}
