//! PostgreSQL connector: a pgoutput change stream from a logical replication slot, a snapshot
//! copied with COPY under the slot's exported snapshot, and batched apply with the pipeline's
//! checkpoint in the same target transaction.

pub mod apply_sql;
pub mod catalog;
pub mod checkpoint;
pub mod copy_binary;
pub mod copy_text;
pub mod cutover_state;
pub mod deferred_indexes;
pub mod digest;
pub mod durability;
pub mod endpoint;
pub mod error;
pub mod fence;
pub mod grouping;
pub mod load;
pub mod ident;
pub mod integrity;
pub mod lanes;
pub mod pgbouncer;
pub mod pgoutput;
pub mod sequences;
pub mod sink;
pub mod slot;
pub mod snapshot;
pub mod source;
pub mod tls;
pub mod walsender;

pub use endpoint::Endpoint;
pub use sink::PgSink;
pub use source::PgSource;
