//! What drmesh knows about PostgreSQL, without I/O: WAL file names and segment arithmetic
//! ([`wal`]), the checks an archived segment's first page header must pass, timeline
//! history files ([`timeline`]) and which files of a data directory are relation main
//! forks ([`datadir`]). Nothing here reads a file, opens a connection or runs a process,
//! so all of it is unit-tested in memory; the agent and the repository do the I/O.
//! The `process` feature adds [`local`]: local clusters run with `pg_ctl` as the data
//! directory's owner, for the quickstart and the tests.

pub mod datadir;
#[cfg(feature = "process")]
pub mod local;
pub mod timeline;
pub mod wal;

pub use datadir::{relation_main_fork, tablespace_link, TABLESPACES_DIR};
pub use timeline::parse_history;
pub use wal::{
    check_segment, gaps, needed_segments, segment_before, segment_name, segment_of, SegmentHeader,
    WalError, WalKind, WalName,
};
