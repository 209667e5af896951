//! `switchyard check`: every problem at once, each with its fix, before anything is written.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use switchyard_core::{TableId, TableSchema};
use tokio_postgres::Client;

use crate::config::{self, PipelineFile, Problem};
use crate::registry::{self, pg_catalog, slot};
use crate::transform::{self, Shaper};

pub async fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let file = match config::load(path) {
        Ok(file) => file,
        Err(invalid) => {
            print_problems(&invalid.0, &[]);
            return Ok(ExitCode::FAILURE);
        }
    };
    let (problems, notes) = check_file(&file).await;
    print_problems(&problems, &notes);
    if problems.is_empty() {
        println!("{}: ready to run", file.pipeline.name);
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}

fn print_problems(problems: &[Problem], notes: &[Problem]) {
    if !problems.is_empty() {
        println!("{} problem(s):", problems.len());
        for problem in problems {
            println!("  ✗ {problem}");
        }
    }
    for note in notes {
        println!("  ! {note}");
    }
}

/// Problems (which stop `run`) and notes (which only limit what can be done later).
pub async fn check_file(file: &PipelineFile) -> (Vec<Problem>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let shaper_transforms = match transform::chain(file) {
        Ok(chain) => chain,
        Err(e) => return (vec![Problem::new("transform", e.to_string())], notes),
    };
    for (index, transform) in shaper_transforms.iter().enumerate() {
        if !file.reversed && transform.inverse().is_none() {
            notes.push(Problem::new(
                format!("transform[{index}]"),
                format!("{} has no inverse: switch-back to the old database will not be possible", transform.describe()),
            ));
        }
    }
    let endpoints = match registry::endpoints(file) {
        Ok(e) => e,
        Err(e) => return (vec![Problem::new("source.url / target.url", e.to_string())], notes),
    };
    let source = match endpoints.source.connect().await {
        Ok(client) => Some(client),
        Err(e) => {
            problems.push(Problem::new("source.url", e.to_string()));
            None
        }
    };
    let target = match endpoints.target.connect().await {
        Ok(client) => Some(client),
        Err(e) => {
            problems.push(Problem::new("target.url", e.to_string()));
            None
        }
    };
    for (side, client, endpoint) in [("source", &source, &endpoints.source), ("target", &target, &endpoints.target)] {
        if let Some(client) = client {
            if let Err(e) = registry::refuse_standby(client, endpoint, side).await {
                problems.push(Problem::new(format!("{side}: standby"), e.to_string()));
            }
        }
    }
    note_settings(source.as_ref(), target.as_ref(), &mut notes).await;
    let mut tables = Vec::new();
    if let Some(source) = &source {
        match check_source(file, source, endpoints.source.user(), &mut problems).await {
            Ok(found) => tables = found,
            Err(e) => problems.push(Problem::new("source", format!("{e:#}"))),
        }
    }
    if let Some(target) = &target {
        let mut shaper = Shaper::new(shaper_transforms);
        if let Err(e) = check_target(target, &tables, &mut shaper, &mut problems).await {
            problems.push(Problem::new("target", format!("{e:#}")));
        }
        if let Err(e) = registry::check_lanes_allowed(target, endpoints.target.user(), file.apply.parallel).await {
            problems.push(Problem::new("apply.parallel", e.to_string()));
        }
    }
    (problems, notes)
}

/// Settings that do not stop a run but change what it does or risks, said up front.
async fn note_settings(source: Option<&Client>, target: Option<&Client>, notes: &mut Vec<Problem>) {
    if let Some(source) = source {
        // PostgreSQL 12 has no such limit, nor the setting.
        match setting(source, "max_slot_wal_keep_size").await {
            Ok(limit) if limit != "-1" => notes.push(Problem::new(
                "source: max_slot_wal_keep_size",
                format!(
                    "is {limit}: a pipeline stopped or behind while more WAL than that is written loses its slot, and then \
                     has to copy afresh; `switchyard status` shows the room left"
                ),
            )),
            _ => {}
        }
    }
    if let Some(target) = target {
        if let Ok(standbys) = setting(target, "synchronous_standby_names").await.map(|names| names.trim().to_string()) {
            if !standbys.is_empty() {
                notes.push(Problem::new(
                    "target: synchronous_standby_names",
                    format!(
                        "is {standbys:?}: each apply commit waits for those standbys (a round trip per batch) instead of \
                         committing asynchronously, so a failover of the target loses no change the source was told is applied"
                    ),
                ));
            }
        }
    }
}

async fn setting(client: &Client, name: &str) -> anyhow::Result<String> {
    Ok(client.query_one("SELECT current_setting($1)", &[&name]).await?.get(0))
}

async fn check_source(
    file: &PipelineFile,
    source: &Client,
    user: &str,
    problems: &mut Vec<Problem>,
) -> anyhow::Result<Vec<Arc<TableSchema>>> {
    let wal_level = setting(source, "wal_level").await?;
    if wal_level != "logical" {
        problems.push(Problem::new(
            "source: wal_level",
            format!("is {wal_level}; set wal_level = logical in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart the server"),
        ));
    }
    let role = source
        .query_one("SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user", &[])
        .await?;
    let (superuser, replication): (bool, bool) = (role.get(0), role.get(1));
    if !superuser && !replication {
        problems.push(Problem::new(format!("source: role {user}"), format!("lacks REPLICATION; run ALTER ROLE {user} REPLICATION")));
    }
    let our_slot = slot::slot_state(source, &file.slot_name()).await?;
    let slots: i64 = source.query_one("SELECT count(*) FROM pg_replication_slots", &[]).await?.get(0);
    let max_slots: i64 = setting(source, "max_replication_slots").await?.parse()?;
    let needed = if our_slot.is_some() { 1 } else { 2 };
    if max_slots - slots + i64::from(our_slot.is_some()) < needed {
        problems.push(Problem::new(
            "source: max_replication_slots",
            format!("{slots} of {max_slots} slots are in use and this pipeline needs {needed} (its own, and a temporary one to resume a copy); raise max_replication_slots and restart"),
        ));
    }
    let senders: i64 = source.query_one("SELECT count(*) FROM pg_stat_replication", &[]).await?.get(0);
    let max_senders: i64 = setting(source, "max_wal_senders").await?.parse()?;
    if max_senders - senders < 1 {
        problems.push(Problem::new(
            "source: max_wal_senders",
            format!("no WAL sender is free ({senders} in use of max_wal_senders = {max_senders}); raise max_wal_senders and restart"),
        ));
    }
    if let Some(state) = &our_slot {
        if state.active {
            problems.push(Problem::new(format!("source: slot {}", file.slot_name()), "is in use: is `switchyard run` already running this pipeline?"));
        }
        if state.lost() {
            problems.push(Problem::new(format!("source: slot {}", file.slot_name()), slot::why_unusable(slot::INVALIDATED)));
        }
    }
    let encoding = setting(source, "server_encoding").await?;
    if encoding != "UTF8" {
        problems.push(Problem::new("source: server_encoding", format!("is {encoding}; Switchyard carries UTF8 databases only")));
    }
    let publication_exists = source
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&file.publication_name()])
        .await?
        .is_some();
    let mut tables = Vec::new();
    for (index, name) in file.source.tables.iter().enumerate() {
        let at = format!("source.tables[{index}]");
        let Some(id) = TableId::parse(name, "public") else { continue };
        let Some(info) = pg_catalog::load_table(source, &id).await? else {
            problems.push(Problem::new(at, format!("table {id} does not exist on the source")));
            continue;
        };
        if !info.has_usable_identity() {
            problems.push(Problem::new(
                at.clone(),
                format!("table {id} has no primary key and no replica identity index: add a primary key (ALTER TABLE {id} ADD PRIMARY KEY (...))"),
            ));
        }
        if !superuser && !publication_exists && info.owner != user {
            problems.push(Problem::new(
                at.clone(),
                format!("table {id} is owned by {}, so {user} cannot add it to a publication: ALTER TABLE {id} OWNER TO {user}, or have {} run CREATE PUBLICATION {} FOR TABLE ...", info.owner, info.owner, file.publication_name()),
            ));
        }
        let readable: bool = source
            .query_one("SELECT has_table_privilege($1::oid, 'SELECT')", &[&info.oid])
            .await?
            .get(0);
        if !readable {
            problems.push(Problem::new(at.clone(), format!("{user} cannot read {id}: GRANT SELECT ON {id} TO {user}")));
        }
        for column in &info.schema.columns {
            if let Some(reason) = pg_catalog::untransferable_type(&column.type_name) {
                problems.push(Problem::new(
                    format!("{at}: column {}", column.name),
                    format!("type {} cannot be carried: {reason}; drop the column with a drop_column transform or change its type", column.type_name),
                ));
            }
        }
        if info.has_usable_identity() {
            tables.push(Arc::new(info.schema));
        }
    }
    Ok(tables)
}

async fn check_target(
    target: &Client,
    tables: &[Arc<TableSchema>],
    shaper: &mut Shaper,
    problems: &mut Vec<Problem>,
) -> anyhow::Result<()> {
    for table in tables {
        let plan = match shaper.plan(table) {
            Ok(plan) => plan,
            Err(e) => {
                problems.push(Problem::new(format!("table {}", table.id), e.to_string()));
                continue;
            }
        };
        let shaped = &plan.target;
        let Some(info) = pg_catalog::load_table(target, &shaped.id).await? else {
            problems.push(Problem::new(
                format!("target table {}", shaped.id),
                format!("does not exist; create it (the source table {} after transforms has columns: {})", table.id, column_list(shaped)),
            ));
            continue;
        };
        for column in &shaped.columns {
            match info.schema.columns.iter().find(|c| c.name == column.name) {
                None => problems.push(Problem::new(
                    format!("target table {}", shaped.id),
                    format!("has no column {} ({}): add it, or rename or drop it with a transform", column.name, column.type_name),
                )),
                Some(target_column) if !types_fit(&column.type_name, &target_column.type_name) => problems.push(Problem::new(
                    format!("target table {} column {}", shaped.id, column.name),
                    format!("is {} but the source gives {}: make them the same type", target_column.type_name, column.type_name),
                )),
                Some(_) => {}
            }
        }
        let defaults = target
            .query(
                "SELECT a.attname::text FROM pg_attribute a
                  WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull
                    AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = ''",
                &[&info.oid],
            )
            .await?;
        for row in defaults {
            let name: String = row.get(0);
            if shaped.column_index(&name).is_none() {
                problems.push(Problem::new(
                    format!("target table {} column {name}", shaped.id),
                    "is NOT NULL without a default and the source does not fill it: give it a default, or attach it with a transform",
                ));
            }
        }
        if pg_catalog::row_security_applies(target, &shaped.id).await? {
            let user: String = target.query_one("SELECT current_user::text", &[]).await?.get(0);
            problems.push(Problem::new(format!("target table {}", shaped.id), pg_catalog::row_security_remedy(&shaped.id, &user)));
        }
        if let Err(e) = switchyard_postgres::apply_sql::plan_for(shaped, &info) {
            problems.push(Problem::new(format!("target table {}", shaped.id), e.to_string()));
        }
    }
    Ok(())
}

/// Source text is accepted by a target column of the same type, and by any text column; an
/// attached constant is read by whatever type the target column has.
fn types_fit(source: &str, target: &str) -> bool {
    source == target || target == "text" || source == crate::transform::CONSTANT_TYPE
}

fn column_list(table: &TableSchema) -> String {
    table.columns.iter().map(|c| format!("{} {}", c.name, c.type_name)).collect::<Vec<_>>().join(", ")
}
