//! Prometheus text exposition of a status document.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

/// Changes and source transactions applied by this process, all pipelines.
pub static APPLIED: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

pub fn record_applied(changes: u64) {
    APPLIED[0].fetch_add(changes, Ordering::Relaxed);
    APPLIED[1].fetch_add(1, Ordering::Relaxed);
}

struct Out {
    text: String,
    pipeline: String,
}

impl Out {
    fn metric(&mut self, name: &str, kind: &str, help: &str, labels: &str, value: f64) {
        let _ = writeln!(self.text, "# HELP switchyard_{name} {help}\n# TYPE switchyard_{name} {kind}");
        self.sample(name, labels, value);
    }

    fn sample(&mut self, name: &str, labels: &str, value: f64) {
        let extra = if labels.is_empty() { String::new() } else { format!(",{labels}") };
        let _ = writeln!(self.text, "switchyard_{name}{{pipeline=\"{}\"{extra}}} {value}", self.pipeline);
    }
}

fn number(value: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(value, |v, key| v.get(key)).and_then(Value::as_f64)
}

pub fn render(pipeline: &str, status: &Value) -> String {
    let mut out = Out { text: String::new(), pipeline: pipeline.to_string() };
    let live = status["live"].as_str().unwrap_or("old");
    // The pipeline that runs: the way back once the shadow is live.
    let running = if live == "shadow" { &status["reverse"] } else { &status["forward"] };
    let forward = &status["forward"];
    out.metric("lag_bytes", "gauge", "WAL on the live database not yet applied on the other.", "", number(running, &["lag_bytes"]).unwrap_or(0.0));
    out.metric("lag_seconds", "gauge", "Age of the oldest change not yet applied.", "", number(running, &["lag_seconds"]).unwrap_or(0.0));
    out.metric("slot_retained_wal_bytes", "gauge", "WAL the pipeline's replication slot holds back.", "", number(running, &["slot_retained_wal_bytes"]).unwrap_or(0.0));
    if let Some(safe) = number(running, &["slot_safe_wal_bytes"]) {
        out.metric("slot_safe_wal_bytes", "gauge", "WAL that may still be written before max_slot_wal_keep_size puts the slot at risk.", "", safe);
    }
    let at_risk = matches!(running["slot_wal_status"].as_str(), Some("unreserved" | "lost"));
    out.metric("slot_at_risk", "gauge", "1 once the slot is past max_slot_wal_keep_size, or was invalidated.", "", f64::from(u8::from(at_risk)));
    out.metric("changes_applied_total", "counter", "Row changes applied by this process.", "", APPLIED[0].load(Ordering::Relaxed) as f64);
    out.metric("transactions_applied_total", "counter", "Source transactions applied by this process.", "", APPLIED[1].load(Ordering::Relaxed) as f64);
    let copied: f64 = forward["tables"].as_array().into_iter().flatten().filter_map(|t| t["rows_copied"].as_f64()).sum();
    out.metric("snapshot_rows_copied", "gauge", "Rows copied by the initial snapshot.", "", copied);
    let verification = &forward["verification"];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as f64).unwrap_or(0.0);
    let chunks = number(verification, &["chunks"]).unwrap_or(0.0);
    let verified = number(verification, &["chunks_verified"]).unwrap_or(0.0);
    out.metric("verification_chunks", "gauge", "Chunks continuous verification covers.", "", chunks);
    out.metric("verification_fraction", "gauge", "Fraction of chunks verified.", "", if chunks > 0.0 { verified / chunks } else { 0.0 });
    out.metric("verification_rows_differing", "gauge", "Rows that differ, outstanding.", "", number(verification, &["rows_differing"]).unwrap_or(0.0));
    out.metric("verification_full_passes", "counter", "Full verification passes finished.", "", number(verification, &["full_passes"]).unwrap_or(0.0));
    let oldest = number(verification, &["oldest_unverified_micros"]).map(|t| ((now - t) / 1e6).max(0.0)).unwrap_or(0.0);
    out.metric("verification_oldest_unverified_seconds", "gauge", "Age of the oldest change not yet verified.", "", oldest);
    let cutover = &forward["cutover"];
    out.metric("cutover_live", "gauge", "1 for the database that takes the application's writes.", &format!("side=\"{live}\""), 1.0);
    out.sample("cutover_live", &format!("side=\"{}\"", if live == "old" { "shadow" } else { "old" }), 0.0);
    let phase = cutover["phase"].as_str().unwrap_or("idle");
    out.metric("cutover_in_progress", "gauge", "1 while a cutover, switch-back or rehearsal runs.", "", f64::from(u8::from(phase != "idle")));
    out.metric("cutover_phase", "gauge", "The cutover phase now.", &format!("phase=\"{phase}\""), 1.0);
    if let Some(blocked) = number(cutover, &["report", "write_blocked_ms"]) {
        out.metric("cutover_last_write_blocked_seconds", "gauge", "Writes held by the last operation (fence to resume).", "", blocked / 1000.0);
    }
    out.text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_s_room_and_risk_are_exported() {
        let status = serde_json::json!({
            "live": "old",
            "forward": { "slot_retained_wal_bytes": 4096, "slot_safe_wal_bytes": 1048576, "slot_wal_status": "reserved" },
        });
        let text = render("p", &status);
        assert!(text.contains("switchyard_slot_retained_wal_bytes{pipeline=\"p\"} 4096"), "{text}");
        assert!(text.contains("switchyard_slot_safe_wal_bytes{pipeline=\"p\"} 1048576"), "{text}");
        assert!(text.contains("switchyard_slot_at_risk{pipeline=\"p\"} 0"), "{text}");
        let lost = serde_json::json!({ "live": "old", "forward": { "slot_wal_status": "lost" } });
        let text = render("p", &lost);
        assert!(text.contains("switchyard_slot_at_risk{pipeline=\"p\"} 1") && !text.contains("slot_safe_wal_bytes"), "{text}");
    }
}
