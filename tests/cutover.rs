//! Cutover and switch-back on real clusters: an application load through PgBouncer across both
//! switches, kill -9 at every step, and the HTTP API.

use std::process::Command;
use std::time::{Duration, Instant};

use switchyard_testkit::{free_port, PgBouncer};

use crate::support::*;

const APP_SCRIPT: &str = r"\set uid random(1, 2000)
BEGIN;
INSERT INTO orders (user_id, amount, status) VALUES (:uid, 1.50, 'app');
UPDATE users SET name = 'seen ' || :uid WHERE id = :uid;
END;
";

fn cutover_section(extra: &str) -> String {
    format!(
        "{TENANTIZE}
[verify]
continuous_chunk_rows = 1000

[cutover]
max_lag_seconds = 20
drain_timeout_seconds = 30
{extra}"
    )
}

fn bouncer_section(bouncer: &PgBouncer) -> String {
    format!(
        "[cutover.pgbouncer]\nadmin_url = \"{}\"\ndatabase = \"app\"\nconfig = \"{}\"\n",
        bouncer.admin_url(),
        bouncer.config_path().display()
    )
}

fn wait_verified(pair: &Pair, process: &mut Switchyard) {
    wait_for(&pair.target, "SELECT full_passes >= 1 AND rows_differing = 0 FROM switchyard.verification", "t", 120, process);
}

/// `switchyard <command> FILE` to completion, asserting success; returns its output.
fn operate(args: &[&str], pipeline: &std::path::Path, process: &mut Switchyard) -> String {
    let (status, output) = switchyard(args, pipeline);
    assert!(status.success(), "switchyard {args:?} failed ({status}):\n{output}\nrun log:\n{}", process.log());
    output
}

fn pgbench(pair: &Pair, bouncer: &PgBouncer, seconds: u64, script: &std::path::Path) -> std::process::Child {
    Command::new(pair.source.bin("pgbench"))
        .args(["-n", "-c", "4", "-j", "2", "-R", "150", "-T", &seconds.to_string(), "-f"])
        .arg(script)
        .args(["-h", "127.0.0.1", "-p", &bouncer.port().to_string(), "-U", PgBouncer::USER, "app"])
        .env_remove("PGDATABASE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn an_application_through_pgbouncer_sees_no_error_across_cutover_and_switchback() {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 2000, 5);
    let bouncer = PgBouncer::start(&[("app", &pair.source, "app")]).unwrap();
    let pipeline = pair.pipeline("moving", &cutover_section(&bouncer_section(&bouncer)));
    let api = format!("127.0.0.1:{}", free_port());
    let mut process = Switchyard::run_with(&["--listen", &api], &[("SWITCHYARD_API_TOKEN", "s3cret")], &pipeline);
    pair.wait_caught_up("switchyard_moving", &mut process);
    wait_verified(&pair, &mut process);

    let script = pair.dir.path().join("app.sql");
    std::fs::write(&script, APP_SCRIPT).unwrap();
    let app = pgbench(&pair, &bouncer, 36, &script);
    std::thread::sleep(Duration::from_secs(6));

    let output = operate(&["cutover"], &pipeline, &mut process);
    eprintln!("cutover under load:\n{output}");
    assert!(output.contains("outcome: completed; live: the shadow database"), "{output}");
    assert!(output.contains("writes held"), "{output}");
    // The application now writes to the shadow: its new rows get the tenant (the column's default)
    // and ids from the shadow's identity, moved past the old database's sequence.
    let old_max: i64 = pair.source.psql("app", "SELECT max(id) FROM orders").parse().unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let new_on_shadow: i64 = pair
        .target
        .psql("app", &format!("SELECT count(*) FROM orders WHERE id > {old_max} AND status = 'app' AND tenant_id = '{TENANT}'"))
        .parse()
        .unwrap();
    assert!(new_on_shadow > 0, "no application insert reached the shadow after cutover; log:\n{}", process.log());
    // ... and they reach the old database through the way back, without the tenant.
    wait_caught_up(&pair.target, &pair.source, "switchyard_moving_reverse", &mut process);
    let back_on_old: i64 =
        pair.source.psql("app", &format!("SELECT count(*) FROM orders WHERE id > {old_max} AND status = 'app'")).parse().unwrap();
    assert!(back_on_old >= new_on_shadow, "{back_on_old} of {new_on_shadow} new rows reached the old database");
    // The old database is fenced to the application.
    let write = pair.source.try_psql("app", "INSERT INTO users (email) VALUES ('late@example.com')");
    assert!(write.is_err_and(|e| e.contains("read-only")), "the old database still takes writes after cutover");
    let (code, metrics) = http("GET", &api, "/metrics", None);
    assert_eq!(code, 200);
    assert!(metrics.contains("switchyard_cutover_live{pipeline=\"moving\",side=\"shadow\"} 1"), "{metrics}");

    // Switch back through the API; no token, no action.
    assert_eq!(http("POST", &api, "/switchback", None).0, 401);
    assert_eq!(http("POST", &api, "/switchback", Some("wrong")).0, 401);
    let (code, body) = http("POST", &api, "/switchback", Some("s3cret"));
    assert_eq!(code, 202, "{body}");
    wait_for(&pair.target, "SELECT live || ' ' || phase FROM switchyard.cutovers", "old idle", 120, &mut process);
    let outcome = pair.target.psql("app", "SELECT outcome FROM switchyard.cutovers");
    assert_eq!(outcome, "completed", "log:\n{}", process.log());

    let finished = app.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&finished.stdout).to_string() + &String::from_utf8_lossy(&finished.stderr);
    assert!(finished.status.success(), "pgbench failed:\n{report}");
    assert!(report.contains("number of failed transactions: 0 "), "client transactions failed:\n{report}");
    let done: i64 = report
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next()?.trim().parse().ok())
        .unwrap_or(0);
    assert!(done > 1000, "pgbench processed only {done} transactions:\n{report}");

    // Inserts with default ids work on each side after each switch.
    pair.source.psql("app", "INSERT INTO users (email) VALUES ('after-switchback@example.com')");
    pair.wait_caught_up("switchyard_moving", &mut process);
    assert_tenantized_equal(&pair);
    let app_rows: i64 = pair.source.psql("app", "SELECT count(*) FROM orders WHERE status = 'app'").parse().unwrap();
    assert!(app_rows >= done, "{app_rows} application orders on the old database, {done} transactions");
    process.stop();
}

#[test]
fn kill9_at_every_cutover_step_completes_or_rolls_back_and_both_sides_agree() {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 300, 3);
    let pipeline = pair.pipeline("killed", &cutover_section(""));
    let before_switch = ["gates", "fence", "mark", "drain", "final_check", "sequences", "arm"];
    let mut points: Vec<(&str, &str)> = Vec::new();
    for phase in before_switch.iter().chain(&["switch", "resume"]) {
        points.push(("before", phase));
        points.push(("after", phase));
    }
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_killed", &mut process);
    for (round, (when, phase)) in points.iter().enumerate() {
        pair.source.psql("app", &format!("INSERT INTO users (email) VALUES ('round{round}@example.com')"));
        pair.wait_caught_up("switchyard_killed", &mut process);
        wait_verified(&pair, &mut process);
        process.stop();
        let failpoint = format!("{when}:{phase}");
        let mut doomed = Switchyard::run_with(&[], &[("SWITCHYARD_FAILPOINT", &failpoint)], &pipeline);
        // The request needs the controller up: it holds its lock on the shadow.
        wait_for(&pair.target, "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory'", "t", 60, &mut doomed);
        let requester = std::thread::spawn({
            let pipeline = pipeline.clone();
            move || switchyard(&["cutover"], &pipeline)
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        while !doomed.log().contains("failpoint reached") {
            doomed.assert_running();
            assert!(Instant::now() < deadline, "never reached {failpoint}; log:\n{}", doomed.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(pair.target.psql("app", "SELECT phase FROM switchyard.cutovers"), *phase);
        doomed.kill9();
        process = Switchyard::run(&pipeline);
        wait_for(&pair.target, "SELECT phase FROM switchyard.cutovers", "idle", 120, &mut process);
        let (live, outcome) = (
            pair.target.psql("app", "SELECT live FROM switchyard.cutovers"),
            pair.target.psql("app", "SELECT outcome FROM switchyard.cutovers"),
        );
        let _ = requester.join();
        let writable = |cluster: &PgCluster, email: &str| cluster.try_psql("app", &format!("INSERT INTO users (email) VALUES ('{email}')"));
        if before_switch.contains(phase) {
            assert_eq!(live, "old", "{failpoint}: {outcome}");
            assert!(outcome.starts_with("rolled back: Switchyard restarted"), "{failpoint}: {outcome}");
            writable(&pair.source, &format!("ok{round}@example.com")).unwrap_or_else(|e| panic!("{failpoint}: old database fenced after rollback: {e}"));
            pair.wait_caught_up("switchyard_killed", &mut process);
            assert_tenantized_equal(&pair);
        } else {
            assert_eq!((live.as_str(), outcome.as_str()), ("shadow", "completed"), "{failpoint}; log:\n{}", process.log());
            assert!(writable(&pair.source, "never@example.com").is_err(), "{failpoint}: both databases take writes");
            pair.target.psql("app", &format!("INSERT INTO users (email) VALUES ('shadow{round}@example.com')"));
            wait_caught_up(&pair.target, &pair.source, "switchyard_killed_reverse", &mut process);
            assert_tenantized_equal(&pair);
            let output = operate(&["switchback"], &pipeline, &mut process);
            assert!(output.contains("outcome: completed; live: the old database"), "{output}");
            assert!(writable(&pair.target, "never@example.com").is_err(), "{failpoint}: shadow still takes writes after switch-back");
            pair.wait_caught_up("switchyard_killed", &mut process);
            assert_tenantized_equal(&pair);
        }
    }
    process.stop();
}

#[test]
fn rehearsal_and_abort_roll_back_and_a_failed_gate_names_its_reason() {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 200, 2);
    // The hook logs its calls; once `slow` exists, fencing also holds the pipeline's checkpoint
    // row on the shadow for 10 s, so the drain waits (a stand-in for a slow target).
    let hook_log = pair.dir.path().join("hook.log");
    let slow = pair.dir.path().join("slow");
    let hold = format!(
        "{} '{}' -c 'BEGIN; SELECT 1 FROM switchyard.pipelines FOR UPDATE; SELECT pg_sleep(10); COMMIT'",
        pair.target.bin("psql").display(),
        pair.target.url("app")
    );
    let script = pair.dir.path().join("hook.sh");
    std::fs::write(
        &script,
        format!(
            "echo $SWITCHYARD_ACTION >> {log}\nif [ $SWITCHYARD_ACTION = fence ] && [ -f {slow} ]; then ({hold} >/dev/null 2>&1 &); sleep 1; fi\n",
            log = hook_log.display(),
            slow = slow.display()
        ),
    )
    .unwrap();
    let hook = format!("hook = \"sh {}\"\nfence = [\"read_only\", \"hook\"]\n", script.display());
    let pipeline = pair.pipeline("rehearsed", &cutover_section(&hook));
    let (status, output) = switchyard(&["cutover"], &pipeline);
    assert!(!status.success() && output.contains("no `switchyard run` of pipeline rehearsed is running"), "{output}");
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_rehearsed", &mut process);
    wait_verified(&pair, &mut process);

    let (status, plan) = switchyard(&["plan"], &pipeline);
    assert!(status.success(), "{plan}");
    assert!(plan.contains("runbook: switchyard cutover (old -> shadow)") && plan.contains("rollback:"), "{plan}");

    let output = operate(&["cutover", "--rehearse"], &pipeline, &mut process);
    assert!(output.contains("outcome: rolled back: rehearsal complete; live: the old database"), "{output}");
    assert!(output.contains("writes held") || output.contains("final_check"), "{output}");
    pair.source.psql("app", "INSERT INTO users (email) VALUES ('after-rehearsal@example.com')");

    // A gate that fails stops the cutover before anything is fenced, naming the reason: here
    // continuous verification finds a row changed on the shadow behind the pipeline's back
    // (its chunk is re-checked because the source touches a neighbour).
    pair.target.psql("app", "UPDATE users SET name = 'tampered' WHERE id = 5");
    pair.source.psql("app", "UPDATE users SET name = 'touch' WHERE id = 6");
    wait_for(&pair.target, "SELECT rows_differing FROM switchyard.verification", "1", 120, &mut process);
    let (status, output) = switchyard(&["cutover"], &pipeline);
    assert!(!status.success(), "{output}");
    assert!(output.contains("1 rows differ") && output.contains("rolled back"), "{output}");
    pair.target.psql("app", "UPDATE users SET name = 'User 5' WHERE id = 5");
    pair.source.psql("app", "UPDATE users SET name = 'touch again' WHERE id = 6");
    wait_for(&pair.target, "SELECT rows_differing FROM switchyard.verification", "0", 120, &mut process);

    // Abort while it drains.
    std::fs::write(&slow, "").unwrap();
    let requester = std::thread::spawn({
        let pipeline = pipeline.clone();
        move || switchyard(&["cutover"], &pipeline)
    });
    wait_for(&pair.target, "SELECT phase FROM switchyard.cutovers", "drain", 60, &mut process);
    let output = operate(&["cutover", "--abort"], &pipeline, &mut process);
    assert!(output.contains("rolled back: aborted by the operator"), "{output}");
    let (status, output) = requester.join().unwrap();
    assert!(!status.success(), "{output}");
    pair.source.psql("app", "INSERT INTO users (email) VALUES ('after-abort@example.com')");
    pair.wait_caught_up("switchyard_rehearsed", &mut process);
    assert_tenantized_equal(&pair);
    let hook_log = std::fs::read_to_string(&hook_log).unwrap_or_default();
    assert!(hook_log.starts_with("fence\nunfence\n"), "hook calls: {hook_log:?}");
    process.stop();
}

#[test]
fn the_api_refuses_actions_without_a_token_and_serves_status_and_metrics() {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 100, 2);
    let pipeline = pair.pipeline("api", &cutover_section(""));
    let api = format!("127.0.0.1:{}", free_port());
    let mut process = Switchyard::run_with(&["--listen", &api], &[], &pipeline);
    pair.wait_caught_up("switchyard_api", &mut process);
    wait_for_api(&api, &mut process);
    let (code, body) = http("POST", &api, "/cutover", Some("anything"));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("SWITCHYARD_API_TOKEN"), "{body}");
    assert_eq!(pair.target.psql("app", "SELECT coalesce(requested, 'none') FROM switchyard.cutovers"), "none");
    let (code, body) = http("GET", &api, "/status", None);
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["live"], "old");
    assert_eq!(status["forward"]["phase"], "streaming");
    let (code, metrics) = http("GET", &api, "/metrics", None);
    assert_eq!(code, 200);
    for name in ["switchyard_lag_bytes{", "switchyard_verification_fraction{", "switchyard_cutover_in_progress{pipeline=\"api\"} 0", "switchyard_changes_applied_total{"] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    // Teardown after a cutover also removes the way back from the shadow.
    wait_verified(&pair, &mut process);
    operate(&["cutover"], &pipeline, &mut process);
    process.stop();
    let (status, output) = switchyard(&["teardown", "--drop-checkpoint"], &pipeline);
    assert!(status.success() && output.contains("dropped replication slot switchyard_api_reverse on the shadow"), "{output}");
    for cluster in [&pair.source, &pair.target] {
        assert_eq!(cluster.psql("app", "SELECT count(*) FROM pg_replication_slots"), "0");
    }
}

/// A pair loaded and streaming through pipeline `name` (with `extra` under [cutover]), first
/// verified, then cut over to the shadow.
fn cut_over(name: &str, extra: impl FnOnce(&Pair) -> String) -> (Pair, std::path::PathBuf, Switchyard) {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 100, 2);
    let pipeline = pair.pipeline(name, &cutover_section(&extra(&pair)));
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up(&format!("switchyard_{name}"), &mut process);
    wait_verified(&pair, &mut process);
    let output = operate(&["cutover"], &pipeline, &mut process);
    assert!(output.contains("outcome: completed; live: the shadow database"), "{output}");
    (pair, pipeline, process)
}

#[test]
fn a_failing_health_check_after_cutover_switches_back_on_its_own() {
    let (pair, _pipeline, mut process) = cut_over("watched", |pair| {
        format!(
            "[cutover.auto_switchback]\nenabled = true\nhealth_check = \"test ! -e {}\"\nhealth_failures = 2\nhealth_interval_seconds = 0.5\n",
            pair.dir.path().join("unhealthy").display()
        )
    });
    let unhealthy = pair.dir.path().join("unhealthy");
    // Healthy: nothing happens for a while.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(pair.target.psql("app", "SELECT live FROM switchyard.cutovers"), "shadow");
    pair.target.psql("app", "INSERT INTO users (email) VALUES ('while-shadow@example.com')");
    std::fs::write(&unhealthy, "").unwrap();
    wait_for(&pair.target, "SELECT live || ' ' || phase || ' ' || operation FROM switchyard.cutovers", "old idle switchback", 60, &mut process);
    let report: serde_json::Value = serde_json::from_str(&pair.target.psql("app", "SELECT report FROM switchyard.cutovers")).unwrap();
    assert_eq!(report["trigger"], "the health check failed 2 times in a row", "{report}");
    assert_eq!(report["outcome"], "completed", "{report}");
    pair.wait_caught_up("switchyard_watched", &mut process);
    assert_tenantized_equal(&pair);
    process.stop();
}

#[test]
fn drift_between_the_shadow_and_the_old_database_after_cutover_switches_back() {
    let (pair, _pipeline, mut process) = cut_over("drifting", |_| {
        "[cutover.auto_switchback]\nenabled = true\ndrift_check_minutes = 0.02\nhealth_interval_seconds = 0.5\n".to_string()
    });
    // Clean passes first: nothing happens.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(pair.target.psql("app", "SELECT live FROM switchyard.cutovers"), "shadow", "log:\n{}", process.log());
    // Someone writes to the fenced old database behind the way back's back.
    pair.source.psql("app", "SET default_transaction_read_only = off; UPDATE users SET name = 'drifted' WHERE id = 7");
    wait_for(&pair.target, "SELECT live || ' ' || phase FROM switchyard.cutovers", "old idle", 120, &mut process);
    let report: serde_json::Value = serde_json::from_str(&pair.target.psql("app", "SELECT report FROM switchyard.cutovers")).unwrap();
    let trigger = report["trigger"].as_str().unwrap_or_default();
    assert!(trigger.starts_with("verification drift: 1 rows differ") && trigger.contains("public.users key"), "{report}");
    process.stop();
}
