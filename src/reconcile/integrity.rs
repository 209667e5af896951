//! Integrity of the target, declared or derived: foreign keys (orphans per constraint), tenant
//! isolation (every migrated row has its tenant; no reference crosses tenants), and the
//! operator's business rules from `[[verify.rules]]`.

use serde::Serialize;
use switchyard_core::TableId;
use switchyard_postgres::integrity::{self, Violations};
use tokio_postgres::Client;

use crate::config::PipelineFile;
use crate::transform::TablePlan;

#[derive(Debug, Serialize)]
pub struct Finding {
    /// `foreign key orders_user_fk`, `tenant isolation via orders_user_fk`, `rule positive amount`.
    pub check: String,
    pub table: String,
    pub violations: u64,
    /// Keys of the first violating rows.
    pub examples: Vec<String>,
}

/// Runs every check on the target tables of `plans`.
pub async fn check(file: &PipelineFile, target: &Client, plans: &[&TablePlan]) -> anyhow::Result<Vec<Finding>> {
    let mut findings = Vec::new();
    let mut add = |check: String, table: &TableId, found: Violations| {
        findings.push(Finding { check, table: table.to_string(), violations: found.count, examples: found.examples });
    };
    for plan in plans {
        let table = &plan.target.id;
        let key: Vec<String> = plan.target.key_names().iter().map(|k| k.to_string()).collect();
        let only: Vec<(String, String)> =
            plan.constants().iter().map(|(c, v)| (c.clone(), v.as_str().unwrap_or_default().to_string())).collect();
        for fk in integrity::foreign_keys(target, table).await? {
            add(format!("foreign key {}", fk.name), table, integrity::orphans(target, &fk, &key, &only).await?);
            // A tenant column on both sides that the key does not include: the reference may
            // cross tenants, so check that it does not.
            for (tenant, _) in &only {
                let parent_has_it = plans.iter().any(|p| p.target.id == fk.parent && p.target.column_index(tenant).is_some());
                if parent_has_it && !fk.columns.contains(tenant) {
                    add(
                        format!("tenant isolation via {}", fk.name),
                        table,
                        integrity::cross_tenant(target, &fk, tenant, &key, &only).await?,
                    );
                }
            }
        }
        for (tenant, _) in &only {
            add(format!("every row has {tenant}"), table, integrity::missing_value(target, table, tenant, &key).await?);
        }
        for rule in file.verify.rules.iter().filter(|r| TableId::parse(&r.table, "public").as_ref() == Some(table)) {
            add(format!("rule {}", rule.name), table, integrity::rule_violations(target, table, &rule.check, &key, &only).await?);
        }
    }
    Ok(findings)
}
