//! Fencing a database's writers, and marking the fence in its change stream.
//!
//! The read-only fence sets `default_transaction_read_only` for the database (or for named
//! roles), which every new session picks up, then ends the sessions already open so none keeps
//! writing. Switchyard's own sessions start with the setting off (see [`crate::Endpoint`]) and
//! carry `application_name` "switchyard…", so they are neither blocked nor ended.

use std::time::{Duration, Instant};

use switchyard_core::{ConnectorError, Lsn};
use tokio_postgres::Client;

use crate::error::PgResultExt;
use crate::ident::quote_ident;

/// The prefix of the logical messages Switchyard writes into a stream.
pub const MESSAGE_PREFIX: &str = "switchyard";

fn read_only_targets(database: &str, roles: &[String]) -> Vec<String> {
    if roles.is_empty() {
        vec![format!("DATABASE {}", quote_ident(database))]
    } else {
        roles.iter().map(|role| format!("ROLE {} IN DATABASE {}", quote_ident(role), quote_ident(database))).collect()
    }
}

/// Makes new sessions read-only, then ends the open ones (but Switchyard's) and waits until
/// they are gone. Returns how many sessions were ended.
pub async fn fence_read_only(client: &Client, database: &str, roles: &[String], end_sessions: bool) -> Result<i64, ConnectorError> {
    for target in read_only_targets(database, roles) {
        let sql = format!("ALTER {target} SET default_transaction_read_only = on");
        client.batch_execute(&sql).await.context(|| {
            format!("cannot fence {target} read-only (needs ownership of the database, or superuser)")
        })?;
    }
    if !end_sessions {
        return Ok(0);
    }
    let others = "datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'
                  AND application_name NOT LIKE 'switchyard%' AND (cardinality($2::text[]) = 0 OR usename = ANY($2))";
    let ended: i64 = client
        .query_one(&format!("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE {others}"), &[&database, &roles])
        .await
        .context(|| format!("cannot end the sessions on database {database} (needs pg_signal_backend or superuser)"))?
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = client
            .query_one(&format!("SELECT count(*) FROM pg_stat_activity WHERE {others}"), &[&database, &roles])
            .await
            .context(|| "cannot list sessions".into())?
            .get(0);
        if left == 0 {
            return Ok(ended);
        }
        if Instant::now() > deadline {
            return Err(ConnectorError::transient(format!("{left} sessions on database {database} did not end within 10 s")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Undoes [`fence_read_only`] for new sessions.
pub async fn unfence_read_only(client: &Client, database: &str, roles: &[String]) -> Result<(), ConnectorError> {
    for target in read_only_targets(database, roles) {
        let sql = format!("ALTER {target} RESET default_transaction_read_only");
        client.batch_execute(&sql).await.context(|| format!("cannot lift the read-only fence on {target}"))?;
    }
    Ok(())
}

/// Writes a transactional logical message; once the stream's consumer has applied a commit at
/// or past the returned position, it has applied every transaction committed before it.
pub async fn emit_mark(client: &Client, content: &str) -> Result<Lsn, ConnectorError> {
    // Flushed at commit (whatever the server's default), so the walsender sends it at once.
    client.batch_execute("SET synchronous_commit = on").await.context(|| "cannot set synchronous_commit".into())?;
    let row = client
        .query_one("SELECT pg_logical_emit_message(true, $1, $2)::text", &[&MESSAGE_PREFIX, &content])
        .await
        .context(|| "cannot write a logical message into the change stream".into())?;
    row.get::<_, String>(0).parse().map_err(ConnectorError::bug)
}
