//! The cutover's durable state, one row per pipeline on the shadow (the forward target), next to
//! the checkpoint. Each phase is written here before it is acted on, so a restarted process
//! knows exactly what it may have done.

use switchyard_core::ConnectorError;
use tokio_postgres::GenericClient;

use crate::checkpoint::CheckpointStore;
use crate::error::PgResultExt;

#[derive(Clone, Debug, PartialEq)]
pub struct CutoverRecord {
    /// Which database takes the application's writes: "old" or "shadow".
    pub live: String,
    /// The operation in progress or last run: "cutover", "switchback" or "rehearsal".
    pub operation: Option<String>,
    /// "idle" when nothing is in progress, else the step being acted on.
    pub phase: String,
    /// An operator's request not yet taken up: an operation, or "abort".
    pub requested: Option<String>,
    /// How the last operation ended, e.g. "completed" or "rolled back: drain timed out".
    pub outcome: Option<String>,
    /// The fence mark's position on the fenced side, once written.
    pub mark_position: Option<String>,
    /// The step report (JSON), kept across restarts.
    pub report: String,
    /// Requests are numbered; `handled_seq` is the last one acted on (or refused), so whoever
    /// asked can tell when its own request is through.
    pub request_seq: i64,
    pub handled_seq: i64,
}

impl CheckpointStore {
    pub async fn load_cutover(&self, client: &impl GenericClient) -> Result<CutoverRecord, ConnectorError> {
        let insert = format!("INSERT INTO {} (pipeline) VALUES ($1) ON CONFLICT DO NOTHING", self.table("cutovers"));
        client.execute(&insert, &[&self.pipeline()]).await.context(|| "cannot create the cutover record".into())?;
        let sql = format!(
            "SELECT live, operation, phase, requested, outcome, mark_position, report, request_seq, handled_seq
               FROM {} WHERE pipeline = $1",
            self.table("cutovers")
        );
        let row = client.query_one(&sql, &[&self.pipeline()]).await.context(|| "cannot read the cutover record".into())?;
        Ok(CutoverRecord {
            live: row.get(0),
            operation: row.get(1),
            phase: row.get(2),
            requested: row.get(3),
            outcome: row.get(4),
            mark_position: row.get(5),
            report: row.get(6),
            request_seq: row.get(7),
            handled_seq: row.get(8),
        })
    }

    /// Writes everything but `requested`, which only operators set and the controller clears.
    pub async fn save_cutover(&self, client: &impl GenericClient, record: &CutoverRecord) -> Result<(), ConnectorError> {
        let sql = format!(
            "UPDATE {} SET live = $2, operation = $3, phase = $4, outcome = $5, mark_position = $6, report = $7,
                    handled_seq = $8, updated_at = now() WHERE pipeline = $1",
            self.table("cutovers")
        );
        client
            .execute(
                &sql,
                &[&self.pipeline(), &record.live, &record.operation, &record.phase, &record.outcome, &record.mark_position, &record.report, &record.handled_seq],
            )
            .await
            .context(|| "cannot record the cutover phase".into())?;
        Ok(())
    }

    /// Records an operator's request and returns its number; `None` if another request is
    /// still waiting to be taken up.
    pub async fn request_cutover(&self, client: &impl GenericClient, request: &str) -> Result<Option<i64>, ConnectorError> {
        self.load_cutover(client).await?;
        // An abort replaces any waiting request; anything else waits its turn.
        let sql = format!(
            "UPDATE {} SET requested = $2, request_seq = request_seq + 1, updated_at = now()
              WHERE pipeline = $1 AND (requested IS NULL OR $2 = 'abort') RETURNING request_seq",
            self.table("cutovers")
        );
        let row = client.query_opt(&sql, &[&self.pipeline(), &request]).await.context(|| "cannot record the request".into())?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Takes the waiting request (only if it is `only`, when given), with its number.
    pub async fn take_request(&self, client: &impl GenericClient, only: Option<&str>) -> Result<Option<(String, i64)>, ConnectorError> {
        let sql = format!(
            "UPDATE {t} SET requested = NULL FROM (SELECT requested FROM {t} WHERE pipeline = $1 FOR UPDATE) AS old
              WHERE {t}.pipeline = $1 AND old.requested IS NOT NULL AND ($2::text IS NULL OR old.requested = $2)
              RETURNING old.requested, {t}.request_seq",
            t = self.table("cutovers")
        );
        let row = client.query_opt(&sql, &[&self.pipeline(), &only]).await.context(|| "cannot take the request".into())?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }
}
