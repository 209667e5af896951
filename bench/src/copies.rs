//! The initial copy, measured: Switchyard into the single-tenant tables (`switchyard_plain`),
//! `pgcopydb clone`, native logical replication's initial sync into the single-tenant tables and
//! into the multi-tenant ones, `pg_dump | pg_restore`, and bare COPYs of the same rows (the
//! limits), each from a clean target database. A copy's time varies by a tenth from one try to
//! the next on a shared 2-core machine, so every tool copies once per round and the median of
//! its rounds counts (Switchyard's tenantize copy too: main times its first, `tenantize_again`
//! the others).
//!
//! Each copy's database goes once it is timed, but round 0's plain pipeline and native
//! subscription: the stream figures use them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchyard_testkit::PgCluster;

use crate::{kill, pipeline_log, session, Transport};

pub struct Copies<'a> {
    pub source: &'a PgCluster,
    pub target: &'a PgCluster,
    pub transport: Transport,
    pub switchyard: &'a Path,
    pub dir: &'a Path,
    /// Copy streams, the tenantize pipeline's `[snapshot] parallel`: the peers get as many.
    pub jobs: usize,
    /// Only the native copy (the stream figures need its subscription).
    pub skip_peers: bool,
}

/// Seconds per copy, by tool, in the order the tools first ran.
#[derive(Default)]
pub struct Samples(Vec<(&'static str, Vec<f64>)>);

impl Samples {
    pub fn push(&mut self, tool: &'static str, round: usize, seconds: f64) {
        println!("figure=snapshot_round round={round} tool={tool} seconds={seconds:.3}");
        match self.0.iter_mut().find(|(name, _)| *name == tool) {
            Some((_, seconds_so_far)) => seconds_so_far.push(seconds),
            None => self.0.push((tool, vec![seconds])),
        }
    }

    /// Each tool's median seconds, with how many rounds it ran.
    pub fn medians(&self) -> Vec<(&'static str, f64, usize)> {
        self.0.iter().map(|(tool, seconds)| (*tool, crate::median(seconds.clone()), seconds.len())).collect()
    }
}

/// Before each timed copy: dirty pages written out on both clusters, so a checkpoint caused by
/// an earlier tool's writes does not land on the next tool's copy.
pub fn settle(source: &PgCluster, target: &PgCluster) {
    source.psql("app", "CHECKPOINT");
    target.psql("postgres", "CHECKPOINT");
}

/// `switchyard run` of `pipeline` until the pipeline in `database` streams (its copy is done):
/// the seconds, and the run, still going. `watch` is called while it copies.
pub fn switchyard_copy(switchyard: &Path, pipeline: &Path, env: &[(&str, String)], target: &PgCluster, database: &str, mut watch: impl FnMut(&mut Child)) -> (f64, Child) {
    let started = Instant::now();
    let mut run = Command::new(switchyard)
        .args(["run"])
        .arg(pipeline)
        .envs(env.iter().map(|(name, value)| (*name, value.as_str())))
        .env("SWITCHYARD_LOG", pipeline_log())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut session = session::Session::open(target, database);
    while session.query("SELECT phase FROM switchyard.pipelines") != "streaming" {
        assert!(run.try_wait().unwrap().is_none(), "switchyard run exited during the copy");
        watch(&mut run);
        std::thread::sleep(Duration::from_millis(20));
    }
    (started.elapsed().as_secs_f64(), run)
}

impl Copies<'_> {
    /// Every peer's copy once (with `skip_peers`, native's alone). Returns the plain pipeline
    /// of round 0, stopped after its copy.
    pub fn round(&self, round: usize, samples: &mut Samples) -> Option<PathBuf> {
        let keep = round == 0;
        let name = |base: &str| if keep { base.to_string() } else { format!("{base}_r{round}") };
        let mut plain = None;
        if !self.skip_peers {
            // Switchyard into the same single-tenant schema the native subscription gets, no
            // transform: what the pipeline costs apart from the multi-tenant target's wider keys.
            let (seconds, pipeline) = self.plain(&name("plain"), keep);
            samples.push("switchyard_plain", round, seconds);
            plain = pipeline;
            if let Some(seconds) = self.pgcopydb(&name("pgcopydb")) {
                samples.push("pgcopydb", round, seconds);
            }
        }
        // Native's initial sync into the same single-tenant schema; round 0's subscription is
        // kept, disabled, for the catch-up and lag figures.
        if keep {
            self.source.psql("app", "CREATE PUBLICATION bench_native FOR TABLE users, orders;");
        }
        samples.push("native", round, self.native(&name("native"), &name("bench_native"), switchyard::demo::SOURCE_SCHEMA, keep));
        if self.skip_peers {
            return plain;
        }
        // Native's initial sync into the multi-tenant tables Switchyard's copy fills (tenant_id
        // from the column's default): the same rows into the same tables. Native cannot follow
        // the stream there (the target's key has a column the source does not send), so the
        // subscription goes once its copy is done.
        let tenantized = self.native(&name("native_tenants"), &name("bench_native_tenants"), &switchyard::demo::target_schema(), false);
        samples.push("native_tenantized", round, tenantized);
        samples.push("pg_dump", round, self.pg_dump());
        self.bare_copies(round, samples);
        plain
    }

    /// Switchyard's tenantize copy again, by a pipeline of its own (`template` renamed) into a
    /// database of its own, both gone after.
    pub fn tenantize_again(&self, round: usize, template: &Path) -> f64 {
        let name = format!("tenantize_r{round}");
        self.create(&name, &switchyard::demo::target_schema());
        let pipeline = self.dir.join(format!("{name}.toml"));
        let text = std::fs::read_to_string(template).unwrap();
        assert!(text.contains("name = \"tenantize\""), "the tenantize pipeline file names its pipeline");
        std::fs::write(&pipeline, text.replace("name = \"tenantize\"", &format!("name = \"{name}\""))).unwrap();
        let env = [("SOURCE_URL", self.transport.url(self.source, "app")), ("TARGET_URL", self.transport.url(self.target, &name))];
        settle(self.source, self.target);
        let (seconds, run) = switchyard_copy(self.switchyard, &pipeline, &env, self.target, &name, |_| {});
        self.stop_and_drop(run, &pipeline, &env, &name);
        seconds
    }

    fn plain(&self, name: &str, keep: bool) -> (f64, Option<PathBuf>) {
        self.create(name, switchyard::demo::SOURCE_SCHEMA);
        let pipeline = self.dir.join(format!("{name}.toml"));
        std::fs::write(
            &pipeline,
            format!(
                "[pipeline]\nname = \"{name}\"\n[source]\ntype = \"postgres\"\nurl = \"{}\"\ntables = [\"users\", \"orders\"]\n\
                 [target]\ntype = \"postgres\"\nurl = \"{}\"\n[verify]\ncontinuous = false\n",
                self.transport.url(self.source, "app"),
                self.transport.url(self.target, name)
            ),
        )
        .unwrap();
        settle(self.source, self.target);
        let (seconds, run) = switchyard_copy(self.switchyard, &pipeline, &[], self.target, name, |_| {});
        if keep {
            stop(run);
            return (seconds, Some(pipeline));
        }
        self.stop_and_drop(run, &pipeline, &[], name);
        (seconds, None)
    }

    /// pgcopydb clone, with the same parallelism; `None` if it is not installed.
    fn pgcopydb(&self, database: &str) -> Option<f64> {
        self.target.create_database(database);
        let work = self.dir.join(database);
        let jobs = self.jobs.to_string();
        settle(self.source, self.target);
        let started = Instant::now();
        let status = Command::new("pgcopydb")
            .args(["clone", "--table-jobs", &jobs, "--index-jobs", &jobs, "--no-owner", "--no-acl", "--skip-extensions", "--dir"])
            .arg(&work)
            .args(["--source", &self.transport.url(self.source, "app"), "--target", &self.transport.url(self.target, database)])
            .env("PATH", format!("{}:{}", self.source.bin("psql").parent().unwrap().display(), std::env::var("PATH").unwrap_or_default()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let seconds = started.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(&work);
        self.drop_database(database);
        match status {
            Ok(s) if s.success() => Some(seconds),
            other => {
                eprintln!("pgcopydb clone did not run ({other:?}); install it with `make deps-bench`");
                None
            }
        }
    }

    /// Subscribes a new database with `schema` to the publication `bench_native`, copying its
    /// rows; seconds until every table is synced. Unless kept (disabled), the subscription and
    /// the database go after.
    fn native(&self, database: &str, subscription: &str, schema: &str, keep: bool) -> f64 {
        self.create(database, schema);
        settle(self.source, self.target);
        let started = Instant::now();
        self.target.psql(
            database,
            &format!(
                "CREATE SUBSCRIPTION {subscription} CONNECTION '{}' PUBLICATION bench_native WITH (copy_data = true);",
                self.transport.conninfo(self.source, "app")
            ),
        );
        let mut session = session::Session::open(self.target, database);
        while session.query("SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'") != "0" {
            std::thread::sleep(Duration::from_millis(20));
        }
        let seconds = started.elapsed().as_secs_f64();
        drop(session);
        if keep {
            self.target.psql(database, &format!("ALTER SUBSCRIPTION {subscription} DISABLE;"));
        } else {
            self.target.psql(database, &format!("DROP SUBSCRIPTION {subscription};"));
            self.drop_database(database);
        }
        seconds
    }

    fn pg_dump(&self) -> f64 {
        let database = "dump";
        self.target.create_database(database);
        settle(self.source, self.target);
        let started = Instant::now();
        let shell = format!(
            "{} -Fc -h {} -p {} -U postgres app | {} --no-owner -h {} -p {} -U postgres -d {database}",
            self.source.bin("pg_dump").display(),
            self.transport.host(self.source),
            self.source.port(),
            self.source.bin("pg_restore").display(),
            self.transport.host(self.target),
            self.target.port()
        );
        assert!(Command::new("bash").args(["-c", &shell]).status().unwrap().success(), "pg_dump | pg_restore failed");
        let seconds = started.elapsed().as_secs_f64();
        self.drop_database(database);
        seconds
    }

    /// The limits: bare COPYs of the same rows with the same parallelism (each table in as many
    /// key ranges as there are streams), into the single-tenant tables, into the multi-tenant
    /// ones (the tenant attached by the source query), and into the multi-tenant ones without
    /// the indexes Switchyard sets aside, built after in parallel (the way Switchyard copies).
    fn bare_copies(&self, round: usize, samples: &mut Samples) {
        let (mut copies, mut tenanted) = (Vec::new(), Vec::new());
        for (table, columns) in [("users", "id, email, name, created_at"), ("orders", "id, user_id, amount, status, note")] {
            for range in key_ranges(self.source, table, self.jobs) {
                let out = |tenant: &str| format!("COPY (SELECT {tenant}{columns} FROM {table} WHERE {range}) TO STDOUT");
                copies.push((out(""), format!("COPY {table} ({columns}) FROM STDIN")));
                let tenant = format!("'{}'::uuid, ", switchyard::demo::TENANT);
                tenanted.push((out(&tenant), format!("COPY {table} (tenant_id, {columns}) FROM STDIN")));
            }
        }
        let deferred = [("orders", "orders_pkey", "PRIMARY KEY (tenant_id, id)"), ("users", "users_tenant_id_email_key", "UNIQUE (tenant_id, email)")];
        let kinds: [(&'static str, &str, &str, &[_], &[_]); 3] = [
            ("bare_copy", "raw", switchyard::demo::SOURCE_SCHEMA, &copies, &[]),
            ("bare_copy_tenantized", "raw_tenants", &switchyard::demo::target_schema(), &tenanted, &[]),
            ("bare_copy_tenantized_deferred", "raw_deferred", &switchyard::demo::target_schema(), &tenanted, &deferred),
        ];
        for (tool, database, schema, copies, set_aside) in kinds {
            self.create(database, schema);
            for (table, index, _) in set_aside {
                self.target.psql(database, &format!("ALTER TABLE {table} DROP CONSTRAINT {index}"));
            }
            settle(self.source, self.target);
            let started = Instant::now();
            bare_copy_streams(self.transport, self.source, self.target, database, copies, self.jobs);
            std::thread::scope(|scope| {
                for (table, index, definition) in set_aside {
                    let target = self.target;
                    scope.spawn(move || target.psql(database, &format!("ALTER TABLE {table} ADD CONSTRAINT {index} {definition}")));
                }
            });
            samples.push(tool, round, started.elapsed().as_secs_f64());
            self.drop_database(database);
        }
    }

    fn create(&self, database: &str, schema: &str) {
        self.target.create_database(database);
        self.target.psql(database, schema);
    }

    fn stop_and_drop(&self, run: Child, pipeline: &Path, env: &[(&str, String)], database: &str) {
        stop(run);
        let teardown = Command::new(self.switchyard).args(["teardown"]).arg(pipeline).envs(env.iter().map(|(n, v)| (*n, v.as_str()))).output().unwrap();
        assert!(teardown.status.success(), "teardown of {}: {}", pipeline.display(), String::from_utf8_lossy(&teardown.stderr));
        self.drop_database(database);
    }

    fn drop_database(&self, database: &str) {
        self.target.psql("postgres", &format!("DROP DATABASE {database} WITH (FORCE)"));
    }
}

fn stop(mut run: Child) {
    unsafe { kill(run.id() as i32, 15) };
    run.wait().unwrap();
}

/// `copy_out` on the source's app database piped by two psql processes into `copy_in` on the
/// target's `database`, applied as a replica (as every tool here applies).
fn bare_copy(transport: Transport, source: &PgCluster, target: &PgCluster, database: &str, copy_out: &str, copy_in: &str) {
    let psql = |cluster: &PgCluster, database: &str| {
        let mut command = Command::new(cluster.bin("psql"));
        command.args(["-X", "-q", "-h", &transport.host(cluster), "-p", &cluster.port().to_string()]);
        command.args(["-U", "postgres", "-d", database]);
        command
    };
    let mut reader = psql(source, "app").args(["-c", copy_out]).stdout(Stdio::piped()).spawn().unwrap();
    let rows = reader.stdout.take().unwrap();
    let writer = psql(target, database)
        .args(["-c", "SET session_replication_role = replica", "-c", copy_in])
        .stdin(rows)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(reader.wait().unwrap().success() && writer.success(), "bare COPY {copy_out} -> {copy_in} failed");
}

/// `copies` run by `parallel` streams at once, each taking the next copy when it is done.
fn bare_copy_streams(transport: Transport, source: &PgCluster, target: &PgCluster, database: &str, copies: &[(String, String)], parallel: usize) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| {
                while let Some((out, into)) = copies.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)) {
                    bare_copy(transport, source, target, database, out, into);
                }
            });
        }
    });
}

/// `id` conditions splitting `table` into `parts` key ranges of about equal width.
fn key_ranges(source: &PgCluster, table: &str, parts: usize) -> Vec<String> {
    let bounds = source.psql("app", &format!("SELECT min(id) || ' ' || max(id) FROM {table}"));
    let (lo, hi) = bounds.split_once(' ').map(|(a, b)| (a.parse::<i64>().unwrap(), b.parse::<i64>().unwrap() + 1)).unwrap();
    let width = ((hi - lo) / parts as i64).max(1);
    (0..parts as i64)
        .map(|k| {
            let from = lo + k * width;
            if k + 1 == parts as i64 { format!("id >= {from}") } else { format!("id >= {from} AND id < {}", from + width) }
        })
        .collect()
}
