//! Runtimes of the coordinator's own, beside actix's thread: the QUIC endpoint's
//! ([`crate::transport`]) and the etcd client's ([`crate::store::EtcdStore`]), so that
//! neither heartbeats nor the leader's lease wait behind REST or `ops/`.

use tokio::runtime::{Builder, Handle, Runtime};

/// A multi-threaded runtime whose threads are named `name`. Shut down in the background
/// when dropped, which an async context (where its owner may be dropped) allows.
pub struct OwnRuntime(Option<Runtime>);

impl OwnRuntime {
    pub fn new(name: &str, threads: usize) -> std::io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .enable_all()
            .build()?;
        Ok(OwnRuntime(Some(runtime)))
    }

    pub fn get(&self) -> &Runtime {
        match &self.0 {
            Some(rt) => rt,
            // Taken only in `drop`.
            None => unreachable!("a runtime is only taken when dropped"),
        }
    }

    pub fn handle(&self) -> Handle {
        self.get().handle().clone()
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
