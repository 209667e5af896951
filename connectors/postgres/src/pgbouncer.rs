//! PgBouncer's admin console, and the `[databases]` entry that says where a database lives.
//!
//! A switch is: `PAUSE db` (transactions in flight finish, new ones wait in PgBouncer), point
//! the entry at the other server in pgbouncer.ini, `RELOAD` (server connections to the old
//! address are closed, being idle), `RESUME db` (the waiting transactions run on the new server).
//! The application sees a pause, not an error.

use std::path::Path;

use switchyard_core::ConnectorError;
use tokio_postgres::{Client, NoTls};

use crate::error::PgResultExt;

pub struct BouncerAdmin {
    client: Client,
    shown: String,
}

impl BouncerAdmin {
    pub async fn connect(url: &str) -> Result<BouncerAdmin, ConnectorError> {
        let shown = crate::endpoint::mask_password(url);
        let (client, connection) =
            tokio_postgres::connect(url, NoTls).await.context(|| format!("cannot connect to the PgBouncer admin console {shown}"))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "PgBouncer admin connection closed");
            }
        });
        Ok(BouncerAdmin { client, shown })
    }

    /// Waits until the database's transactions in flight have finished; new ones wait.
    pub async fn pause(&self, database: &str) -> Result<(), ConnectorError> {
        self.command(&format!("PAUSE {}", console_name(database)?), &["already"]).await
    }

    pub async fn resume(&self, database: &str) -> Result<(), ConnectorError> {
        self.command(&format!("RESUME {}", console_name(database)?), &["not paused"]).await
    }

    pub async fn reload(&self) -> Result<(), ConnectorError> {
        self.command("RELOAD", &[]).await
    }

    /// Where PgBouncer sends the database now, and whether it holds it paused. RELOAD
    /// succeeds even when the file cannot be loaded, so a switch confirms itself with this.
    pub async fn entry(&self, database: &str) -> Result<Option<(Address, bool)>, ConnectorError> {
        // The admin console speaks only the simple query protocol.
        let messages = self.client.simple_query("SHOW DATABASES").await.context(|| format!("SHOW DATABASES on {}", self.shown))?;
        for message in messages {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                if row.get("name") == Some(database) {
                    let address = Address {
                        host: row.get("host").unwrap_or_default().to_string(),
                        port: row.get("port").and_then(|p| p.parse().ok()).unwrap_or(0),
                        dbname: row.get("database").unwrap_or_default().to_string(),
                    };
                    return Ok(Some((address, row.get("paused") == Some("1"))));
                }
            }
        }
        Ok(None)
    }

    /// Runs an admin command; an error whose text contains one of `harmless` means it is
    /// already in the wanted state (PAUSE twice, RESUME when not paused).
    async fn command(&self, command: &str, harmless: &[&str]) -> Result<(), ConnectorError> {
        match self.client.simple_query(command).await {
            Ok(_) => Ok(()),
            Err(error) if error.as_db_error().is_some_and(|e| harmless.iter().any(|h| e.message().contains(h))) => Ok(()),
            Err(error) => Err(error).context(|| format!("PgBouncer {command} on {}", self.shown)),
        }
    }
}

/// The console takes a bare name; refuse anything else rather than quote it.
fn console_name(database: &str) -> Result<&str, ConnectorError> {
    if !database.is_empty() && database.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        Ok(database)
    } else {
        Err(ConnectorError::config(format!(
            "PgBouncer database name {database:?} must be letters, digits, '_' or '-' to be used on the admin console"
        )))
    }
}

/// Where a database entry points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub host: String,
    pub port: u16,
    pub dbname: String,
}

/// Rewrites the `[databases]` entry `database` in `config` to point at `to`, keeping its other
/// settings (user, pool size, ...). Written to a temporary file and renamed, so PgBouncer never
/// reads half a file.
pub fn point_entry(config: &Path, database: &str, to: &Address) -> Result<(), ConnectorError> {
    let shown = config.display();
    let text = std::fs::read_to_string(config).map_err(|e| ConnectorError::config(format!("cannot read PgBouncer config {shown}: {e}")))?;
    let rewritten = rewrite_entry(&text, database, to)
        .ok_or_else(|| ConnectorError::config(format!("PgBouncer config {shown} has no entry {database:?} in its [databases] section")))?;
    let temporary = config.with_extension("switchyard-tmp");
    let write = || -> std::io::Result<()> {
        std::fs::write(&temporary, rewritten)?;
        if let Ok(metadata) = std::fs::metadata(config) {
            std::fs::set_permissions(&temporary, metadata.permissions())?;
        }
        std::fs::rename(&temporary, config)
    };
    write().map_err(|e| ConnectorError::config(format!("cannot rewrite PgBouncer config {shown}: {e}")))
}

/// Where the entry `database` points now, if it names host, port and dbname.
pub fn entry_address(config: &Path, database: &str) -> Result<Option<Address>, ConnectorError> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| ConnectorError::config(format!("cannot read PgBouncer config {}: {e}", config.display())))?;
    let Some((_, value)) = find_entry(&text, database) else { return Ok(None) };
    let fields = parse_fields(value);
    let get = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    Ok(match (get("host"), get("port").and_then(|p| p.parse().ok()), get("dbname")) {
        (Some(host), Some(port), Some(dbname)) => Some(Address { host, port, dbname }),
        _ => None,
    })
}

/// The line index and the value of the entry `database` in the `[databases]` section.
fn find_entry<'a>(text: &'a str, database: &str) -> Option<(usize, &'a str)> {
    let mut in_databases = false;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_databases = trimmed.eq_ignore_ascii_case("[databases]");
            continue;
        }
        if !in_databases || trimmed.starts_with(';') || trimmed.starts_with('#') {
            continue;
        }
        if let Some((key, value)) = trimmed.split_once('=') {
            if key.trim().trim_matches('"') == database {
                return Some((index, value.trim()));
            }
        }
    }
    None
}

fn rewrite_entry(text: &str, database: &str, to: &Address) -> Option<String> {
    let (index, value) = find_entry(text, database)?;
    let mut fields: Vec<(String, String)> = parse_fields(value).into_iter().filter(|(k, _)| !matches!(k.as_str(), "host" | "port" | "dbname")).collect();
    fields.insert(0, ("dbname".into(), to.dbname.clone()));
    fields.insert(0, ("port".into(), to.port.to_string()));
    fields.insert(0, ("host".into(), to.host.clone()));
    let entry = fields.iter().map(|(k, v)| format!("{k}={}", quote_value(v))).collect::<Vec<_>>().join(" ");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[index] = format!("{database} = {entry}");
    let mut out = lines.join("\n");
    out.push('\n');
    Some(out)
}

/// `host=a port=5432 password='x y'` -> pairs; single quotes group, `''` is a quote.
fn parse_fields(value: &str) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|&c| c != '=' && !c.is_whitespace())).collect();
        if key.is_empty() {
            return fields;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == '=') {
            chars.next();
        }
        let mut val = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '\'' {
                    if chars.peek() == Some(&'\'') {
                        chars.next();
                        val.push('\'');
                    } else {
                        break;
                    }
                } else {
                    val.push(c);
                }
            }
        } else {
            val = std::iter::from_fn(|| chars.next_if(|c| !c.is_whitespace())).collect();
        }
        fields.push((key, val));
    }
}

fn quote_value(value: &str) -> String {
    if !value.is_empty() && value.chars().all(|c| !c.is_whitespace() && c != '\'') {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', "''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INI: &str = "[databases]\n; comment\nother = host=h1 port=1 dbname=x\napp = host=127.0.0.1 port=5433 dbname=old user=app pool_size=20 password='a b'\n\n[pgbouncer]\nlisten_port = 6432\n";

    #[test]
    fn rewrites_only_the_named_entry_and_keeps_its_other_settings() {
        let to = Address { host: "10.0.0.2".into(), port: 5434, dbname: "new db".into() };
        let out = rewrite_entry(INI, "app", &to).unwrap();
        assert!(out.contains("app = host=10.0.0.2 port=5434 dbname='new db' user=app pool_size=20 password='a b'\n"), "{out}");
        assert!(out.contains("other = host=h1 port=1 dbname=x\n"));
        assert!(out.contains("[pgbouncer]\nlisten_port = 6432\n"));
        let fields = parse_fields(find_entry(&out, "app").unwrap().1);
        assert_eq!(fields[2], ("dbname".to_string(), "new db".to_string()));
    }

    #[test]
    fn a_missing_entry_or_one_outside_databases_is_not_found() {
        assert!(rewrite_entry(INI, "nope", &Address { host: "h".into(), port: 1, dbname: "d".into() }).is_none());
        assert!(find_entry(INI, "listen_port").is_none());
    }
}
