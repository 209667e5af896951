//! The vocabulary every Switchyard part speaks: values, rows, changes, positions, the connector
//! traits and the error kinds the runtime acts on. Connectors depend on this crate; this crate
//! depends on no connector and on no engine code.

mod change;
pub mod digest;
mod error;
mod position;
mod schema;
mod traits;
mod value;

pub use change::{BatchLimit, Change, ChangeBatch, Commit};
pub use error::{ConnectorError, ErrorKind};
pub use position::{Lsn, Position};
pub use schema::{Column, TableId, TableSchema};
pub use traits::{Acknowledgements, Progress, Sink, Source};
pub use value::Value;

pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;
