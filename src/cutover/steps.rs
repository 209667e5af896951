//! What each cutover phase does, on real databases. Every step may be repeated after a crash
//! (a slot already there is dropped and made again, a fence already up is put up again), and
//! each has its undo in `roll_back`.

use std::time::{Duration, Instant};

use anyhow::Context;
use switchyard_core::{Position, TableId};
use switchyard_postgres::cutover_state::CutoverRecord;
use switchyard_postgres::pgbouncer::{self, BouncerAdmin};
use switchyard_postgres::{fence, sequences, Endpoint};
use tokio_postgres::Client;

use super::controller::{Controller, Interrupt, Report, StepResult};
use super::phase::{Operation, Phase};
use super::{hook, Side};
use crate::config::{FenceMethod, PipelineFile};
use crate::registry::{self, slot};
use crate::transform::{self, Origin, Shaper};

/// One operation's direction: the application's writes move from `from` to `to`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Move {
    pub from: Side,
    pub to: Side,
}

impl Move {
    pub fn of(operation: Operation) -> Move {
        match operation {
            Operation::Switchback => Move { from: Side::Shadow, to: Side::Old },
            Operation::Cutover | Operation::Rehearsal => Move { from: Side::Old, to: Side::Shadow },
        }
    }
}

/// Automatic switch-back's memory between checks.
#[derive(Default)]
pub(super) struct AutoWatch {
    health_failures: u32,
    last_check: Option<Instant>,
    last_drift_check: Option<Instant>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Controller {
    pub(super) fn endpoint(&self, side: Side) -> &Endpoint {
        match side {
            Side::Old => &self.old,
            Side::Shadow => &self.shadow,
        }
    }

    fn url(&self, side: Side) -> &str {
        match side {
            Side::Old => &self.forward.source.url,
            Side::Shadow => &self.forward.target.url,
        }
    }

    /// The pipeline carrying changes out of `side`.
    pub(super) fn pipeline_out_of(&self, side: Side) -> &PipelineFile {
        match side {
            Side::Old => &self.forward,
            Side::Shadow => &self.backward,
        }
    }

    async fn connect(&self, side: Side) -> Result<Client, Interrupt> {
        Ok(self.endpoint(side).connect().await?)
    }

    fn methods(&self) -> Vec<FenceMethod> {
        self.forward.cutover.fence_methods()
    }

    pub(super) async fn step(&mut self, phase: Phase, operation: Operation, record: &mut CutoverRecord, report: &mut Report) -> StepResult {
        let step = Move::of(operation);
        match phase {
            Phase::Idle => Ok(String::new()),
            Phase::Gates => self.gates(step, operation).await,
            Phase::Fence => {
                let detail = self.fence(step).await?;
                report.fenced_at_ms = Some(now_ms());
                Ok(detail)
            }
            Phase::Mark => {
                let mark = fence::emit_mark(&self.connect(step.from).await?, &format!("fence {operation}")).await?;
                record.mark_position = Some(mark.to_string());
                self.store.save_cutover(&self.client, record).await?;
                Ok(format!("fence mark at {mark} on the {} database", step.from.name()))
            }
            Phase::Drain => {
                let mark = record.mark_position.as_deref().context("no fence mark recorded")?.parse().map_err(anyhow::Error::msg)?;
                let timeout = Duration::from_secs_f64(self.forward.cutover.drain_timeout_seconds);
                let waited = self.wait_applied(step, mark, timeout, "the fence mark").await?;
                // Applied is not yet on disk (apply commits asynchronously): traffic must not move
                // to a database whose crash could still take back what it applied.
                let carrier = registry::checkpoint_store(self.pipeline_out_of(step.from));
                carrier.flush_commits(&self.connect(step.to).await?).await?;
                Ok(format!("the {} database applied the fence mark after {:.0} ms", step.to.name(), waited.as_secs_f64() * 1000.0))
            }
            Phase::FinalCheck => self.final_check(step).await,
            Phase::Sequences => self.sequences(step).await,
            Phase::Arm => self.arm(step).await,
            Phase::Switch => {
                let detail = self.switch(step).await?;
                report.write_blocked_ms = report.fenced_at_ms.map(|at| now_ms().saturating_sub(at) as f64);
                Ok(detail)
            }
            Phase::Resume => {
                let detail = self.resume(step, record).await?;
                report.finished_at_ms = Some(now_ms());
                Ok(detail)
            }
            Phase::RollingBack => self.roll_back(step).await,
        }
    }

    /// Writes a probe into `step.from`'s stream and waits until `step.to` applied it.
    pub(super) async fn probe_lag(&self, step: Move, limit: Duration) -> Result<Duration, Interrupt> {
        let probe = fence::emit_mark(&self.connect(step.from).await?, "probe").await?;
        self.wait_applied(step, probe, limit, "a lag probe").await
    }

    /// Waits until the pipeline out of `step.from` has committed a source position at or past
    /// `position` on `step.to`; an operator's abort ends the wait.
    async fn wait_applied(&self, step: Move, position: switchyard_core::Lsn, limit: Duration, what: &str) -> Result<Duration, Interrupt> {
        let carrier = self.pipeline_out_of(step.from);
        let store = registry::checkpoint_store(carrier);
        let target = self.connect(step.to).await?;
        let started = Instant::now();
        let mut last_abort_check = Instant::now();
        loop {
            let applied = store.load(&target).await?.and_then(|r| r.applied);
            if let Some(Position::Postgres(applied)) = applied {
                if applied >= position {
                    return Ok(started.elapsed());
                }
            }
            if started.elapsed() > limit {
                let shown = applied.map(|p| p.encode()).unwrap_or_else(|| "nothing".into());
                return Err(Interrupt::Failed(format!(
                    "{what} at {position} was not applied within {:.1} s (applied: {shown}); is `switchyard run` streaming?",
                    limit.as_secs_f64()
                )));
            }
            if last_abort_check.elapsed() > Duration::from_millis(200) {
                last_abort_check = Instant::now();
                if self.store.take_request(&self.client, Some("abort")).await?.is_some() {
                    return Err(Interrupt::Abort);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn gates(&self, step: Move, operation: Operation) -> StepResult {
        let mut failures = Vec::new();
        let mut passed = Vec::new();
        let max_lag = Duration::from_secs_f64(self.forward.cutover.max_lag_seconds);
        match self.probe_lag(step, max_lag).await {
            Ok(lag) => passed.push(format!("lag {:.0} ms", lag.as_secs_f64() * 1000.0)),
            Err(Interrupt::Abort) => return Err(Interrupt::Abort),
            Err(Interrupt::Failed(reason)) => failures.push(format!("lag: {reason}")),
        }
        if operation != Operation::Switchback {
            match self.verification_gate().await? {
                Ok(detail) => passed.push(detail),
                Err(reason) => failures.push(reason),
            }
        }
        let back = self.pipeline_out_of(step.to);
        let (problems, _) = crate::commands::check_file(back).await;
        if problems.is_empty() {
            passed.push("the way back passes check".into());
        } else {
            failures.extend(problems.iter().map(|p| format!("the way back ({}): {p}", back.pipeline.name)));
        }
        if failures.is_empty() {
            Ok(passed.join("; "))
        } else {
            Err(Interrupt::Failed(failures.join("; ")))
        }
    }

    /// Continuous verification must have finished a full pass and show no difference.
    pub(super) async fn verification_gate(&self) -> anyhow::Result<Result<String, String>> {
        let cutover = &self.forward.cutover;
        if !cutover.require_verified {
            return Ok(Ok("verification not required (cutover.require_verified = false)".into()));
        }
        if !self.forward.verify.continuous {
            return Ok(Err("verification: continuous verification is off; turn on verify.continuous or set cutover.require_verified = false".into()));
        }
        let record = self.store.load_verification(&self.client).await?;
        Ok(match record {
            None => Err("verification: no pass has finished yet; wait for the first full pass (see `switchyard status`)".into()),
            Some(v) if v.full_passes == 0 => Err("verification: the first full pass has not finished yet".into()),
            Some(v) if v.rows_differing > 0 => Err(format!(
                "verification: {} rows differ; see `switchyard verify`, and repair with `switchyard verify --repair`",
                v.rows_differing
            )),
            Some(v) => Ok(format!("verification clean ({} chunks, {} full passes)", v.chunks_verified, v.full_passes)),
        })
    }

    async fn fence(&self, step: Move) -> StepResult {
        let cutover = &self.forward.cutover;
        let mut done = Vec::new();
        for method in self.methods() {
            match method {
                FenceMethod::Pgbouncer => {
                    let admin = BouncerAdmin::connect(&cutover.pgbouncer.admin_url).await?;
                    let limit = Duration::from_secs_f64(cutover.drain_timeout_seconds);
                    tokio::time::timeout(limit, admin.pause(&cutover.pgbouncer.database))
                        .await
                        .map_err(|_| Interrupt::Failed(format!("PgBouncer PAUSE did not finish within {:.0} s: a transaction stays open", limit.as_secs_f64())))??;
                    done.push(format!("PgBouncer paused {}", cutover.pgbouncer.database));
                }
                FenceMethod::ReadOnly => {
                    let endpoint = self.endpoint(step.from);
                    let client = self.connect(step.from).await?;
                    let ended = fence::fence_read_only(&client, endpoint.database(), &cutover.read_only_roles, true).await?;
                    done.push(format!("{} read-only, {ended} sessions ended", endpoint.database()));
                }
                FenceMethod::Hook => {
                    self.hook("fence", step).await?;
                    done.push("hook fenced".into());
                }
            }
        }
        Ok(done.join("; "))
    }

    async fn hook(&self, action: &str, step: Move) -> anyhow::Result<()> {
        let command = &self.forward.cutover.hook;
        hook::run(command, action, &self.forward.pipeline.name, step.from, step.to, self.endpoint(step.to), self.url(step.to)).await
    }

    async fn final_check(&self, step: Move) -> StepResult {
        let carrier = self.pipeline_out_of(step.from);
        // Only the forward pipeline is verified continuously, so only it knows touched chunks.
        let touched = match (&self.touched, step.from) {
            (Some(touched), Side::Old) => touched.pending(),
            _ => Vec::new(),
        };
        let check = crate::reconcile::final_check(carrier, &touched).await?;
        let rows: i64 = check.counts.iter().map(|c| c.1).sum();
        if check.clean() {
            Ok(format!("{} tables, {rows} rows, counts equal; {} touched chunks equal", check.counts.len(), check.chunks_checked))
        } else {
            let shown: Vec<&str> = check.differences.iter().take(5).map(String::as_str).collect();
            Err(Interrupt::Failed(format!("{} differences: {}", check.differences.len(), shown.join("; "))))
        }
    }

    async fn sequences(&self, step: Move) -> StepResult {
        let carrier = self.pipeline_out_of(step.from);
        let from = self.connect(step.from).await?;
        let to = self.connect(step.to).await?;
        let mut shaper = Shaper::new(transform::chain(carrier).map_err(anyhow::Error::from)?);
        let mut moved = Vec::new();
        for table in crate::runtime::load_source_tables(&from, carrier).await? {
            let plan = shaper.plan(&table).map_err(anyhow::Error::from)?;
            let targets = sequences::owned_sequences(&to, &plan.target.id).await?;
            for (column, sequence) in sequences::owned_sequences(&from, &table.id).await? {
                let Some(source_index) = table.columns.iter().position(|c| c.name == column) else { continue };
                let Some(target_index) = plan.origins().iter().position(|o| *o == Origin::Source(source_index)) else { continue };
                let target_column = &plan.target.columns[target_index].name;
                let Some((_, target_sequence)) = targets.iter().find(|(c, _)| c == target_column) else { continue };
                let next = sequences::next_value(&from, &sequence).await?;
                let now = sequences::advance_past(&to, target_sequence, next).await?;
                moved.push(format!("{}.{target_column} next {now}", plan.target.id));
            }
        }
        Ok(if moved.is_empty() { "no sequences".into() } else { moved.join(", ") })
    }

    /// Creates the way back's slot on `step.to` now, while no application write has reached it,
    /// and starts the way back's checkpoint there: it will stream from this exact point.
    async fn arm(&self, step: Move) -> StepResult {
        let back = self.pipeline_out_of(step.to);
        let to = self.connect(step.to).await?;
        let tables: Vec<TableId> = back.source.tables.iter().filter_map(|t| TableId::parse(t, "public")).collect();
        slot::ensure_publication(&to, &back.publication_name(), &tables).await?;
        slot::drop_slot(&to, &back.slot_name()).await?;
        let row = to
            .query_one("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", &[&back.slot_name()])
            .await
            .with_context(|| format!("cannot create replication slot {} on the {} database", back.slot_name(), step.to.name()))?;
        let at: switchyard_core::Lsn = row.get::<_, String>(0).parse().map_err(anyhow::Error::msg)?;
        let mut from = self.connect(step.from).await?;
        let store = registry::checkpoint_store(back);
        store.ensure(&from).await?;
        store.restart_at(&mut from, &back.slot_name(), &back.publication_name(), &Position::Postgres(at)).await?;
        Ok(format!("slot {} on the {} database at {at}", back.slot_name(), step.to.name()))
    }

    async fn switch(&self, step: Move) -> StepResult {
        let cutover = &self.forward.cutover;
        let to = self.connect(step.to).await?;
        let to_endpoint = self.endpoint(step.to);
        // A side that was live before keeps a read-only guard; lift it before writes arrive.
        if let Err(error) = fence::unfence_read_only(&to, to_endpoint.database(), &cutover.read_only_roles).await {
            if self.methods().contains(&FenceMethod::ReadOnly) {
                return Err(error.into());
            }
        }
        let mut done = vec![format!("{} writable", step.to.name())];
        for method in self.methods() {
            match method {
                FenceMethod::Pgbouncer => {
                    let bouncer = &cutover.pgbouncer;
                    let address = to_endpoint.address();
                    pgbouncer::point_entry(std::path::Path::new(&bouncer.config), &bouncer.database, &address)?;
                    let admin = BouncerAdmin::connect(&bouncer.admin_url).await?;
                    admin.reload().await?;
                    let loaded = admin.entry(&bouncer.database).await?.map(|(a, _)| a);
                    if loaded.as_ref() != Some(&address) {
                        return Err(Interrupt::Failed(format!(
                            "PgBouncer did not load the new entry for {} (it shows {loaded:?}); see its log",
                            bouncer.database
                        )));
                    }
                    admin.resume(&bouncer.database).await?;
                    done.push(format!("PgBouncer {} -> {}:{}/{} and resumed", bouncer.database, address.host, address.port, address.dbname));
                }
                FenceMethod::Hook => {
                    self.hook("switch", step).await?;
                    done.push("hook switched".into());
                }
                FenceMethod::ReadOnly => {}
            }
        }
        Ok(done.join("; "))
    }

    async fn resume(&self, step: Move, record: &mut CutoverRecord) -> StepResult {
        let cutover = &self.forward.cutover;
        let mut done = Vec::new();
        if !self.methods().contains(&FenceMethod::ReadOnly) {
            // The application no longer reaches it; a read-only guard catches anything that still would.
            let from = self.connect(step.from).await?;
            match fence::fence_read_only(&from, self.endpoint(step.from).database(), &cutover.read_only_roles, false).await {
                Ok(_) => done.push(format!("{} kept read-only", step.from.name())),
                Err(error) => tracing::warn!(%error, "cannot keep the old side read-only; only the traffic switch fences it"),
            }
        }
        record.live = step.to.name().to_string();
        self.store.save_cutover(&self.client, record).await?;
        self.live.send_replace(step.to);
        // The pipeline out of the old live side stops after the batch in hand; then its slot goes.
        let mut running = self.running.clone();
        tokio::time::timeout(Duration::from_secs(120), running.wait_for(|side| *side != Some(step.from)))
            .await
            .map_err(|_| Interrupt::Failed(format!("the pipeline out of the {} database did not stop within 120 s", step.from.name())))?
            .map_err(|_| Interrupt::Failed("the pipeline runner is gone".into()))?;
        let carrier = self.pipeline_out_of(step.from);
        slot::drop_slot(&self.connect(step.from).await?, &carrier.slot_name()).await?;
        done.push(format!("dropped slot {}; {} pipeline started", carrier.slot_name(), self.pipeline_out_of(step.to).pipeline.name));
        Ok(done.join("; "))
    }

    async fn roll_back(&self, step: Move) -> StepResult {
        let cutover = &self.forward.cutover;
        let back = self.pipeline_out_of(step.to);
        slot::drop_slot(&self.connect(step.to).await?, &back.slot_name()).await?;
        let mut done = Vec::new();
        for method in self.methods() {
            match method {
                FenceMethod::ReadOnly => {
                    let from = self.connect(step.from).await?;
                    fence::unfence_read_only(&from, self.endpoint(step.from).database(), &cutover.read_only_roles).await?;
                    done.push(format!("{} writable again", step.from.name()));
                }
                FenceMethod::Pgbouncer => {
                    let admin = BouncerAdmin::connect(&cutover.pgbouncer.admin_url).await?;
                    admin.resume(&cutover.pgbouncer.database).await?;
                    done.push("PgBouncer resumed".into());
                }
                FenceMethod::Hook => {
                    self.hook("unfence", step).await?;
                    done.push("hook unfenced".into());
                }
            }
        }
        Ok(done.join("; "))
    }

    /// Automatic switch-back: within the watch window after a completed cutover, a trigger
    /// that fires names itself.
    pub(super) async fn check_triggers(&self, record: &CutoverRecord, watch: &mut AutoWatch) -> anyhow::Result<Option<String>> {
        let auto = &self.forward.cutover.auto_switchback;
        if !auto.enabled || record.live != Side::Shadow.name() || record.phase != Phase::Idle.to_string() {
            return Ok(None);
        }
        let report: Report = serde_json::from_str(&record.report).unwrap_or_default();
        let Some(finished) = report.finished_at_ms.filter(|_| report.operation == Operation::Cutover.to_string()) else { return Ok(None) };
        if now_ms().saturating_sub(finished) as f64 > auto.watch_minutes * 60_000.0 {
            return Ok(None);
        }
        if watch.last_check.is_some_and(|t| t.elapsed().as_secs_f64() < auto.health_interval_seconds) {
            return Ok(None);
        }
        watch.last_check = Some(Instant::now());
        let failures = self.reverse_health.failures();
        if failures >= auto.reverse_failures {
            return Ok(Some(format!("the reverse pipeline failed {failures} times in a row")));
        }
        if !auto.health_check.is_empty() {
            let healthy = tokio::time::timeout(
                Duration::from_secs_f64(auto.health_interval_seconds.max(1.0)),
                tokio::process::Command::new("sh").arg("-c").arg(&auto.health_check).kill_on_drop(true).status(),
            )
            .await
            .is_ok_and(|status| status.is_ok_and(|s| s.success()));
            watch.health_failures = if healthy { 0 } else { watch.health_failures + 1 };
            if watch.health_failures >= auto.health_failures {
                return Ok(Some(format!("the health check failed {} times in a row", watch.health_failures)));
            }
        }
        let limit = Duration::from_secs_f64(auto.max_reverse_lag_seconds);
        if let Err(Interrupt::Failed(reason)) = self.probe_lag(Move { from: Side::Shadow, to: Side::Old }, limit).await {
            return Ok(Some(format!("the reverse pipeline lags: {reason}")));
        }
        let drift_due = auto.drift_check_minutes > 0.0
            && watch.last_drift_check.is_none_or(|t| t.elapsed().as_secs_f64() >= auto.drift_check_minutes * 60.0);
        if drift_due {
            watch.last_drift_check = Some(Instant::now());
            let report = crate::reconcile::verify(&self.backward, &Default::default()).await?;
            let differing: u64 = report.tables.iter().map(|t| t.rows_differing).sum();
            if differing > 0 {
                let first = report.tables.iter().find_map(|t| t.differences.first().map(|d| format!("{} key {}", t.target_table, d.key)));
                return Ok(Some(format!(
                    "verification drift: {differing} rows differ between the shadow and the old database (first: {})",
                    first.unwrap_or_default()
                )));
            }
        }
        Ok(None)
    }
}
