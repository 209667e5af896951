//! The one place where a pipeline file's `type` picks a concrete connector.

use switchyard_core::ConnectorError;

use crate::config::PipelineFile;

pub use switchyard_postgres::catalog::{self as pg_catalog, TableInfo};
pub use switchyard_postgres::checkpoint::{CheckpointStore, ChunkRecord, PipelineRecord};
pub use switchyard_postgres::deferred_indexes;
pub use switchyard_postgres::lanes::{check_lanes_allowed, LaneSink};
pub use switchyard_postgres::load::BulkLoader;
pub use switchyard_postgres::slot;
pub use switchyard_postgres::snapshot::{RowReader, SnapshotReader};
pub use switchyard_postgres::endpoint::{commit_durably, refuse_standby};
pub use switchyard_postgres::{Endpoint, PgSink, PgSource};

/// The connections a pipeline file names. Only PostgreSQL exists so far; `config::validate`
/// refuses any other `type` before this is reached.
pub struct Endpoints {
    pub source: Endpoint,
    pub target: Endpoint,
}

pub fn endpoints(file: &PipelineFile) -> Result<Endpoints, ConnectorError> {
    match (file.source.kind.as_str(), file.target.kind.as_str()) {
        ("postgres", "postgres") => Ok(Endpoints { source: Endpoint::parse(&file.source.url)?, target: Endpoint::parse(&file.target.url)? }),
        (source, target) => Err(ConnectorError::config(format!("no connector for {source} -> {target}"))),
    }
}

pub fn checkpoint_store(file: &PipelineFile) -> CheckpointStore {
    CheckpointStore::new(&file.target.checkpoint_schema, &file.pipeline.name)
}
