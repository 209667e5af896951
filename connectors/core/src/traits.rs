use crate::{ChangeBatch, Commit, Position, Result};

/// How far the target has the stream, as the runtime publishes it to the source. Closing the
/// channel tells the source the runtime is done: it confirms what it was given and ends the
/// stream.
pub type Acknowledgements = tokio::sync::watch::Receiver<Option<Progress>>;

/// The target's progress through the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The newest position whose transaction the target has committed: readers there see it.
    pub applied: Position,
    /// The newest position whose commit the target has on disk, so a crash of the target keeps
    /// it (`None` before the first is known): the source may let its log go up to here.
    pub durable: Option<Position>,
}

/// A change stream that can be resumed from a position.
///
/// Ordering contract: batches come in source commit order and end on transaction boundaries
/// (see [`ChangeBatch`]). Acknowledgement contract: the source is built with an
/// [`Acknowledgements`] receiver and lets its log go (PostgreSQL: confirms the slot) only up to
/// a durable position received there, promptly, also while it waits for changes; on restart it must
/// deliver every transaction after the position it resumes from.
pub trait Source: Send {
    /// The next batch, or `None` once the stream ended (or the acknowledgements closed).
    fn next_batch(&mut self) -> impl std::future::Future<Output = Result<Option<ChangeBatch>>> + Send;
}

/// A target that applies batches atomically together with the pipeline's checkpoint.
///
/// Durability contract: when [`Sink::write`] returns `Some(commit)`, the target has committed
/// the batch's rows and the checkpoint naming `commit.position` in one transaction; that commit
/// may reach the target's disk later (the sink says when: for PostgreSQL, `LaneSink::durable`),
/// and a crash of the target before then takes both back together. A batch without a commit
/// is applied inside the open target transaction and only made visible by the batch that ends
/// the source transaction; if the sink fails or the process dies before that, none of it is.
pub trait Sink: Send {
    fn write(&mut self, batch: &ChangeBatch) -> impl std::future::Future<Output = Result<Option<Commit>>> + Send;
}
