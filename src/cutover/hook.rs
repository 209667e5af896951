//! The operator's hook: a command that fences, unfences or switches traffic by whatever means
//! the site has (a load balancer, a service registry, a config push).

use std::time::Duration;

use anyhow::{bail, Context};
use switchyard_postgres::Endpoint;

use super::Side;

/// Runs `command` with `sh -c` and the action in its environment; fails on a non-zero exit or
/// after 60 s. The new side's URL (with its password) is passed only in the environment.
pub async fn run(command: &str, action: &str, pipeline: &str, from: Side, to: Side, to_endpoint: &Endpoint, to_url: &str) -> anyhow::Result<()> {
    let address = to_endpoint.address();
    let mut child = tokio::process::Command::new("sh");
    child
        .arg("-c")
        .arg(command)
        .env("SWITCHYARD_ACTION", action)
        .env("SWITCHYARD_PIPELINE", pipeline)
        .env("SWITCHYARD_FROM", from.name())
        .env("SWITCHYARD_TO", to.name())
        .env("SWITCHYARD_TO_HOST", &address.host)
        .env("SWITCHYARD_TO_PORT", address.port.to_string())
        .env("SWITCHYARD_TO_DBNAME", &address.dbname)
        .env("SWITCHYARD_TO_URL", to_url)
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), child.output())
        .await
        .with_context(|| format!("the cutover hook did not finish its {action} within 60 s"))?
        .with_context(|| format!("cannot run the cutover hook {command:?}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("the cutover hook's {action} failed ({}): {}", output.status, stderr.trim());
    }
    Ok(())
}
