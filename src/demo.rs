//! `switchyard demo`: the main job on throwaway databases, start to finish.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use switchyard_testkit::{seed_statement, PgCluster, SqlLoad};
use tokio::sync::watch;

const TENANT: &str = "00000000-0000-0000-0000-000000000001";
const PIPELINE: &str = include_str!("../pipelines/tenantize.toml");

/// The seed's single-tenant schema.
pub const SOURCE_SCHEMA: &str = "
CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE, name text,
                    created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users(id),
                     amount numeric(12,2) NOT NULL, status text NOT NULL, note text);";

/// The multi-tenant schema the demo moves it into.
pub fn target_schema() -> String {
    format!(
        "CREATE TABLE tenants (id uuid PRIMARY KEY, name text NOT NULL);
         INSERT INTO tenants VALUES ('{TENANT}', 'tenant one');
         CREATE TABLE users (tenant_id uuid NOT NULL DEFAULT '{TENANT}' REFERENCES tenants(id), id bigint NOT NULL,
                             email text NOT NULL, name text, created_at timestamptz NOT NULL,
                             PRIMARY KEY (tenant_id, id), UNIQUE (tenant_id, email));
         CREATE TABLE orders (tenant_id uuid NOT NULL DEFAULT '{TENANT}' REFERENCES tenants(id), id bigint NOT NULL,
                              user_id bigint NOT NULL, amount numeric(12,2) NOT NULL, status text NOT NULL, note text,
                              PRIMARY KEY (tenant_id, id),
                              FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) DEFERRABLE INITIALLY DEFERRED);"
    )
}

pub async fn run(users: u64, load_seconds: u64) -> anyhow::Result<ExitCode> {
    println!("starting two throwaway PostgreSQL clusters ...");
    let (source, target) = tokio::task::spawn_blocking(|| {
        let source = PgCluster::start();
        let target = PgCluster::start();
        source.create_database("app");
        target.create_database("app");
        (source, target)
    })
    .await?;
    println!("source {}  target {}", source.url("app"), target.url("app"));
    source.psql("app", SOURCE_SCHEMA);
    target.psql("app", &target_schema());
    println!("loading {users} users and {} orders into the source ...", users * 10);
    let started = Instant::now();
    source.psql(
        "app",
        &format!(
            "INSERT INTO users (email, name) SELECT 'user' || g || '@example.com', 'User ' || g FROM generate_series(1, {users}) g;
             INSERT INTO orders (user_id, amount, status) SELECT 1 + (g % {users}), (g % 100000) / 100.0, 'new' FROM generate_series(1, {}) g;
             ANALYZE;",
            users * 10
        ),
    );
    println!("loaded in {:.1} s; starting a live write load and the tenantize pipeline", started.elapsed().as_secs_f64());
    let (source_url, target_url) = (source.url("app"), target.url("app"));
    let env = move |name: &str| match name {
        "SOURCE_URL" => Some(source_url.clone()),
        "TARGET_URL" => Some(target_url.clone()),
        _ => std::env::var(name).ok(),
    };
    let file = crate::config::parse_str(PIPELINE, &env)?;
    let load = SqlLoad::start(&source, "app", |n| seed_statement(42, n));
    let (stop, shutdown) = watch::channel(false);
    let pipeline = tokio::spawn({
        let file = file.clone();
        async move { crate::runtime::run(&file, shutdown).await }
    });
    let load_until = Instant::now() + Duration::from_secs(load_seconds);
    while Instant::now() < load_until && !pipeline.is_finished() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let statements = tokio::task::spawn_blocking(move || load.finish()).await?;
    println!("write load stopped after {statements} statements; waiting until the target has caught up ...");
    wait_caught_up(&source, &file.slot_name(), &pipeline).await?;
    let _ = stop.send(true);
    pipeline.await.context("pipeline task")??;
    println!("caught up in {:.1} s from the start of the copy\n", started.elapsed().as_secs_f64());
    let ok = compare(&source, &target);
    println!("{}", if ok { "source and target agree." } else { "source and target DIFFER." });
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn wait_caught_up(
    source: &PgCluster,
    slot: &str,
    pipeline: &tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let goal = source.psql("app", "SELECT pg_current_wal_insert_lsn()");
    let query = format!("SELECT coalesce(confirmed_flush_lsn >= '{goal}', false) FROM pg_replication_slots WHERE slot_name = '{slot}'");
    while source.psql("app", &query) != "t" {
        anyhow::ensure!(!pipeline.is_finished(), "the pipeline stopped before catching up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Row counts and a checksum per table, source vs this tenant's rows on the target.
fn compare(source: &PgCluster, target: &PgCluster) -> bool {
    println!("{:<8} {:>10} {:>34} {:>10} {:>34}", "table", "source", "checksum", "target", "checksum");
    let mut all_equal = true;
    for (table, columns) in [("users", "id, email, name, created_at"), ("orders", "id, user_id, amount, status, note")] {
        let sql = |filter: &str| {
            format!("SELECT count(*) || ' ' || md5(coalesce(string_agg(t::text, '|' ORDER BY id), '')) FROM (SELECT {columns} FROM {table} {filter}) t")
        };
        let a = source.psql("app", &sql(""));
        let b = target.psql("app", &sql(&format!("WHERE tenant_id = '{TENANT}'")));
        let (a_count, a_sum) = a.split_once(' ').unwrap_or(("?", "?"));
        let (b_count, b_sum) = b.split_once(' ').unwrap_or(("?", "?"));
        println!("{table:<8} {a_count:>10} {a_sum:>34} {b_count:>10} {b_sum:>34}");
        all_equal &= a == b;
    }
    all_equal
}
