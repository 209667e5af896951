//! Which applied source positions the target has on disk.
//!
//! Apply commits without waiting for the target's WAL flush (`synchronous_commit = off`, as
//! PostgreSQL's own logical replication applies): a commit is visible at once, and is reported
//! to the source as applied; it is reported as durable, which lets the slot go past it, only
//! once the target's flushed WAL position has passed the end of its commit record. A crash of
//! the target then takes back only commits the slot still holds, and the next run applies them
//! again from the checkpoint, which went back with them.
//!
//! A commit's record ends before the target's WAL insert position as read by any later
//! statement on the same connection. Each target transaction begins by reading both positions
//! (with the pipeline's lock, no extra round trip), so while batches flow every read bounds the
//! commits before it and shows how far the flush has come; when they stop, the runtime asks
//! (`LaneSink::poll_durable`) until the WAL writer has flushed the last one.

use std::collections::VecDeque;

use switchyard_core::{ConnectorError, Lsn, Position};
use tokio_postgres::Client;

use crate::error::PgResultExt;

/// The target's WAL as one statement saw it: where the next record goes, and how far the WAL
/// is on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetWal {
    pub insert: Lsn,
    pub flush: Lsn,
}

/// The SQL columns a statement adds to read [`TargetWal`] (see `TargetWal::from_row`).
pub const WAL_COLUMNS: &str = "pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn()::text";

impl TargetWal {
    /// Reads the two columns of [`WAL_COLUMNS`] starting at column `first`.
    pub fn from_row(row: &tokio_postgres::Row, first: usize) -> Result<TargetWal, ConnectorError> {
        let lsn = |index: usize| -> Result<Lsn, ConnectorError> {
            let text: &str = row.get(index);
            text.parse().map_err(|e: String| ConnectorError::bug(format!("the target's WAL position: {e}")))
        };
        Ok(TargetWal { insert: lsn(first)?, flush: lsn(first + 1)? })
    }

    pub async fn read(client: &Client) -> Result<TargetWal, ConnectorError> {
        let row = client.query_one(&format!("SELECT {WAL_COLUMNS}"), &[]).await.context(|| "cannot read the target's WAL position".into())?;
        TargetWal::from_row(&row, 0)
    }
}

/// How apply's commits reach the target's disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitMode {
    /// Without waiting: a position is durable once the target's flush passes its commit.
    Asynchronous,
    /// Each commit waits for the disk (and for synchronous standbys): durable when it returns.
    WaitForDisk,
}

impl CommitMode {
    /// The mode for a target with these settings, and the `synchronous_commit` the applying
    /// sessions set (`None`: keep the server's). A target with synchronous standbys waits for
    /// them: a failover to a standby must not lose a commit the source was told is durable,
    /// and the local flush this module watches says nothing about the standbys.
    pub fn for_target(synchronous_standby_names: &str, synchronous_commit: &str) -> (CommitMode, Option<&'static str>) {
        if synchronous_standby_names.trim().is_empty() {
            return (CommitMode::Asynchronous, Some("off"));
        }
        match synchronous_commit {
            "off" | "local" => (CommitMode::WaitForDisk, Some("on")),
            _ => (CommitMode::WaitForDisk, None),
        }
    }
}

/// Sets how this applying session commits (see [`CommitMode::for_target`]).
pub async fn choose_commit_mode(client: &Client) -> Result<CommitMode, ConnectorError> {
    let row = client
        .query_one("SELECT current_setting('synchronous_standby_names'), current_setting('synchronous_commit')", &[])
        .await
        .context(|| "cannot read the target's commit settings".into())?;
    let (mode, setting) = CommitMode::for_target(row.get(0), row.get(1));
    if let Some(setting) = setting {
        client
            .batch_execute(&format!("SET synchronous_commit = {setting}"))
            .await
            .context(|| "cannot set synchronous_commit".into())?;
    }
    Ok(mode)
}

/// Applied positions waiting for the target's flush, and the newest one past it.
#[derive(Debug)]
pub struct Durability {
    mode: CommitMode,
    /// The newest position committed since the target's insert position was last read: its
    /// commit ends before the next read.
    unbounded: Option<Position>,
    /// Committed positions, oldest first, each with a WAL position its commit ends before.
    bounded: VecDeque<(Lsn, Position)>,
    durable: Option<Position>,
}

impl Durability {
    /// Starts at `resumed` (the checkpoint a run starts from): committed, perhaps by a run that
    /// died before the target flushed it.
    pub fn new(mode: CommitMode, resumed: Position) -> Durability {
        // Committing asynchronously, it is not known to be on disk until a read of the
        // target's WAL says so.
        let mut durability = Durability { mode, unbounded: None, bounded: VecDeque::new(), durable: None };
        durability.committed(resumed);
        durability
    }

    /// The target committed the transaction that applied up to `position`.
    pub fn committed(&mut self, position: Position) {
        match self.mode {
            CommitMode::WaitForDisk => self.durable = Some(position),
            CommitMode::Asynchronous => self.unbounded = Some(position),
        }
    }

    /// A statement, after every commit so far, saw the target's WAL at `wal`.
    pub fn observed(&mut self, wal: TargetWal) {
        if let Some(position) = self.unbounded.take() {
            self.bounded.push_back((wal.insert, position));
        }
        while let Some((ends_before, _)) = self.bounded.front() {
            if *ends_before > wal.flush {
                break;
            }
            let (_, position) = self.bounded.pop_front().expect("front");
            self.durable = Some(position);
        }
    }

    /// The newest committed position on the target's disk.
    pub fn durable(&self) -> Option<&Position> {
        self.durable.as_ref()
    }

    /// Whether a committed position is not yet known to be on disk.
    pub fn waiting(&self) -> bool {
        self.unbounded.is_some() || !self.bounded.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(lsn: u64) -> Position {
        Position::Postgres(Lsn(lsn))
    }

    fn wal(insert: u64, flush: u64) -> TargetWal {
        TargetWal { insert: Lsn(insert), flush: Lsn(flush) }
    }

    /// A position becomes durable only once a read after its commit shows the flush past the
    /// insert position of a read after its commit; never on the commit alone, and never by a
    /// read from before it.
    #[test]
    fn a_position_is_durable_once_the_flush_passes_a_read_after_its_commit() {
        let mut durability = Durability::new(CommitMode::Asynchronous, at(100));
        assert_eq!(durability.durable(), None, "the resumed checkpoint may not be on disk yet");
        durability.observed(wal(5_000, 4_000));
        assert_eq!(durability.durable(), None, "the flush has not passed the read after the resumed commit");
        durability.committed(at(200));
        assert_eq!(durability.durable(), None);
        durability.observed(wal(6_000, 5_000));
        assert_eq!(durability.durable(), Some(&at(100)), "flushed past the read that bounds the resumed commit");
        assert!(durability.waiting());
        durability.committed(at(300));
        durability.observed(wal(7_000, 6_500));
        assert_eq!(durability.durable(), Some(&at(200)), "300's bound is 7000, not yet flushed");
        durability.observed(wal(7_000, 7_000));
        assert_eq!(durability.durable(), Some(&at(300)));
        assert!(!durability.waiting());
        // A flush seen by the same read that bounds a commit covers it when the WAL is all on disk.
        durability.committed(at(400));
        durability.observed(wal(7_100, 7_100));
        assert_eq!(durability.durable(), Some(&at(400)));
    }

    /// Commits that wait for the disk are durable when they return.
    #[test]
    fn commits_that_wait_for_the_disk_are_durable_at_once() {
        let mut durability = Durability::new(CommitMode::WaitForDisk, at(100));
        assert_eq!(durability.durable(), Some(&at(100)));
        durability.committed(at(200));
        assert_eq!(durability.durable(), Some(&at(200)));
        assert!(!durability.waiting());
    }

    #[test]
    fn synchronous_standbys_keep_commits_waiting_for_them() {
        assert_eq!(CommitMode::for_target("", "on"), (CommitMode::Asynchronous, Some("off")));
        assert_eq!(CommitMode::for_target("", "off"), (CommitMode::Asynchronous, Some("off")));
        assert_eq!(CommitMode::for_target("standby1", "off"), (CommitMode::WaitForDisk, Some("on")));
        assert_eq!(CommitMode::for_target("ANY 1 (a, b)", "local"), (CommitMode::WaitForDisk, Some("on")));
        assert_eq!(CommitMode::for_target("standby1", "remote_apply"), (CommitMode::WaitForDisk, None));
    }
}
