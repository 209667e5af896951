//! Sequences and identity counters: read where one side's stands, move the other's past it.

use switchyard_core::{ConnectorError, TableId};
use tokio_postgres::Client;

use crate::error::PgResultExt;
use crate::ident::quote_table;

/// The columns of `table` whose default comes from a sequence (serial or identity), with it.
pub async fn owned_sequences(client: &Client, table: &TableId) -> Result<Vec<(String, TableId)>, ConnectorError> {
    let rows = client
        .query(
            "SELECT a.attname::text, n.nspname::text, c.relname::text
               FROM pg_attribute a
               CROSS JOIN LATERAL (SELECT pg_get_serial_sequence($1, a.attname)::regclass AS seq) s
               JOIN pg_class c ON c.oid = s.seq
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            &[&quote_table(table)],
        )
        .await
        .context(|| format!("cannot list the sequences of {table}"))?;
    Ok(rows.iter().map(|r| (r.get(0), TableId::new(r.get::<_, String>(1), r.get::<_, String>(2)))).collect())
}

/// The value the sequence's next `nextval` would return.
pub async fn next_value(client: &Client, sequence: &TableId) -> Result<i64, ConnectorError> {
    let sql = format!(
        "SELECT CASE WHEN s.is_called THEN s.last_value + p.seqincrement ELSE s.last_value END
           FROM {} s, pg_sequence p WHERE p.seqrelid = $1::text::regclass",
        quote_table(sequence)
    );
    let row = client.query_one(&sql, &[&quote_table(sequence)]).await.context(|| format!("cannot read sequence {sequence}"))?;
    Ok(row.get(0))
}

/// Makes the sequence's next value at least `next` (never moves it back); returns its next value.
pub async fn advance_past(client: &Client, sequence: &TableId, next: i64) -> Result<i64, ConnectorError> {
    let current = next_value(client, sequence).await?;
    if current >= next {
        return Ok(current);
    }
    client
        .execute("SELECT setval($1::text::regclass, $2, false)", &[&quote_table(sequence), &next])
        .await
        .context(|| format!("cannot move sequence {sequence} to {next} (needs UPDATE on it)"))?;
    Ok(next)
}
