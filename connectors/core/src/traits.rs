use crate::{ChangeBatch, Commit, Position, Result};

/// The newest position the target has durably committed, as the runtime publishes it to the
/// source. Closing the channel tells the source the runtime is done: it confirms what it was
/// given and ends the stream.
pub type Acknowledgements = tokio::sync::watch::Receiver<Option<Position>>;

/// A change stream that can be resumed from a position.
///
/// Ordering contract: batches come in source commit order and end on transaction boundaries
/// (see [`ChangeBatch`]). Acknowledgement contract: the source is built with an
/// [`Acknowledgements`] receiver and lets its log go (PostgreSQL: confirms the slot) only up to
/// a position received there, promptly, also while it waits for changes; on restart it must
/// deliver every transaction after the position it resumes from.
pub trait Source: Send {
    /// The next batch, or `None` once the stream ended (or the acknowledgements closed).
    fn next_batch(&mut self) -> impl std::future::Future<Output = Result<Option<ChangeBatch>>> + Send;
}

/// A target that applies batches atomically together with the pipeline's checkpoint.
///
/// Durability contract: when [`Sink::write`] returns `Some(commit)`, the target has committed
/// the batch's rows and the checkpoint naming `commit.position` in one transaction. A batch
/// without a commit is applied inside the open target transaction and only made visible (and
/// durable) by the batch that ends the source transaction; if the sink fails or the process
/// dies before that, none of it is.
pub trait Sink: Send {
    fn write(&mut self, batch: &ChangeBatch) -> impl std::future::Future<Output = Result<Option<Commit>>> + Send;
}
