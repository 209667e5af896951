//! Loading snapshot chunks into the target with COPY, each chunk in one transaction with the
//! record that it is done, so a chunk is either wholly there and recorded or not there at all.

use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures_util::SinkExt;
use switchyard_core::{ConnectorError, Position, TableId, TableSchema, Value};
use tokio_postgres::{Client, CopyInSink};

use crate::checkpoint::{CheckpointStore, ChunkRecord};
use crate::copy_text;
use crate::endpoint::Endpoint;
use crate::error::PgResultExt;
use crate::ident::{quote_ident, quote_table};

/// Bytes gathered before they are handed to the COPY.
const SEND_THRESHOLD: usize = 256 * 1024;

pub struct BulkLoader {
    client: Client,
    store: CheckpointStore,
}

pub struct ChunkLoad<'a> {
    loader: &'a BulkLoader,
    copy: Pin<Box<CopyInSink<Bytes>>>,
    buffer: BytesMut,
    rows: i64,
}

impl BulkLoader {
    pub async fn connect(endpoint: &Endpoint, store: CheckpointStore) -> Result<Self, ConnectorError> {
        let client = endpoint.connect().await?;
        // Skipping triggers and FK checks lets chunks of related tables load in any order;
        // without the privilege, parallel copies of FK-related tables may have to retry in order.
        crate::endpoint::act_as_replica(&client, "copying").await;
        Ok(BulkLoader { client, store })
    }

    /// Begins loading one chunk into `table` (its columns in order).
    pub async fn start(&self, table: &TableSchema) -> Result<ChunkLoad<'_>, ConnectorError> {
        let columns: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        self.start_columns(&table.id, &columns).await
    }

    /// Begins loading one chunk into these columns of `table`, in this order.
    pub async fn start_columns(&self, table: &TableId, columns: &[&str]) -> Result<ChunkLoad<'_>, ConnectorError> {
        self.client.batch_execute("BEGIN").await.context(|| "cannot begin a chunk".into())?;
        let columns = columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
        let sql = format!("COPY {} ({columns}) FROM STDIN", quote_table(table));
        let copy = self.client.copy_in(&sql).await.context(|| format!("cannot copy into {table}"))?;
        Ok(ChunkLoad { loader: self, copy: Box::pin(copy), buffer: BytesMut::with_capacity(SEND_THRESHOLD * 2), rows: 0 })
    }
}

impl ChunkLoad<'_> {
    pub async fn push(&mut self, row: &[Value]) -> Result<(), ConnectorError> {
        copy_text::write_line(row, &mut self.buffer);
        self.rows += 1;
        self.send_if_full().await
    }

    /// Passes COPY text data from the source through, `suffix` (constant values) added to each
    /// line; returns the lines it ended.
    pub async fn push_text(&mut self, data: &[u8], suffix: &[u8]) -> Result<u64, ConnectorError> {
        let lines = copy_text::append_with_suffix(data, suffix, &mut self.buffer);
        self.rows += lines as i64;
        self.send_if_full().await?;
        Ok(lines)
    }

    async fn send_if_full(&mut self) -> Result<(), ConnectorError> {
        if self.buffer.len() >= SEND_THRESHOLD {
            let bytes = self.buffer.split().freeze();
            self.copy.send(bytes).await.context(|| "copy into the target broke".into())?;
        }
        Ok(())
    }

    pub fn rows(&self) -> i64 {
        self.rows
    }

    /// Ends the COPY and commits it with the chunk's record.
    pub async fn finish(mut self, chunk: &ChunkRecord, copied_at: &Position) -> Result<i64, ConnectorError> {
        if !self.buffer.is_empty() {
            let bytes = self.buffer.split().freeze();
            self.copy.send(bytes).await.context(|| "copy into the target broke".into())?;
        }
        self.copy.as_mut().finish().await.context(|| format!("cannot finish copying chunk {} of {}", chunk.chunk, chunk.table))?;
        let client = &self.loader.client;
        self.loader.store.chunk_done(client, chunk, copied_at, self.rows).await?;
        client.batch_execute("COMMIT").await.context(|| "cannot commit a chunk".into())?;
        Ok(self.rows)
    }
}
