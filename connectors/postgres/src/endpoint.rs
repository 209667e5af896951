//! A PostgreSQL server as a pipeline names it: the parsed URL, its TLS settings, and the URL as
//! it may be shown (password masked).

use std::str::FromStr;

use switchyard_core::ConnectorError;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::error::PgResultExt;
use crate::tls::{self, TlsSettings};
use crate::walsender::{ReplicationConnection, SnapshotSession};

#[derive(Clone)]
pub struct Endpoint {
    config: tokio_postgres::Config,
    tls: TlsSettings,
    shown: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Endpoint {
    /// Parses a `postgres://` URL. A password missing from the URL is taken from `PGPASSWORD`,
    /// then from the password file (`PGPASSFILE`, default `~/.pgpass`).
    pub fn parse(url: &str) -> Result<Endpoint, ConnectorError> {
        let shown = mask_password(url);
        let (tls, plain_url) = TlsSettings::from_url(url)?;
        let mut config = tokio_postgres::Config::from_str(&plain_url)
            .map_err(|e| ConnectorError::config(format!("cannot parse connection URL {shown}: {e}")))?;
        if config.get_application_name().is_none() {
            config.application_name("switchyard");
        }
        // A cutover fences the old database read-only; Switchyard's own sessions (the reverse
        // pipeline's apply, the fence mark) must still write, and startup options outrank the
        // database's and roles' settings.
        let mut options = config.get_options().map(|o| format!("{o} ")).unwrap_or_default();
        options.push_str("-c default_transaction_read_only=off");
        // Copying a table's chunk, building its index and digesting it take as long as the
        // table makes them, and a copy worker's snapshot session waits while its worker builds an
        // index: a timeout set for the role's other sessions would fail the pipeline over and
        // over. As pg_dump does, Switchyard's sessions run without them, unless the URL sets them.
        for timeout in ["statement_timeout", "idle_in_transaction_session_timeout"] {
            if !options.contains(timeout) {
                options.push_str(&format!(" -c {timeout}=0"));
            }
        }
        config.options(options);
        if config.get_password().is_none() {
            if let Some(password) = password_from_environment(&config) {
                config.password(password);
            }
        }
        Ok(Endpoint { config, tls, shown })
    }

    /// The URL with its password replaced by `****`: the only form of it that may be logged.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or("postgres")
    }

    pub fn database(&self) -> &str {
        self.config.get_dbname().unwrap_or_else(|| self.user())
    }

    /// Where the server listens, as a connection pooler's entry would name it: the first TCP
    /// host (or socket directory) and port, and the database.
    pub fn address(&self) -> crate::pgbouncer::Address {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "localhost".to_string(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        crate::pgbouncer::Address { host, port, dbname: self.database().to_string() }
    }

    pub async fn connect(&self) -> Result<Client, ConnectorError> {
        let client = tls::connect(&self.config, &self.tls).await.context(|| format!("cannot connect to {}", self.shown))?;
        // PostgreSQL 14 and later end a session idle longer than idle_session_timeout, and a
        // pipeline's sessions wait idle whenever the source is quiet. Not a startup option like
        // the timeouts above: older servers refuse a setting they do not know at connection.
        let sets_its_own = self.config.get_options().is_some_and(|options| options.contains("idle_session_timeout"));
        if !sets_its_own {
            if let Err(error) = client.batch_execute("SET idle_session_timeout = 0").await {
                if error.code() != Some(&SqlState::UNDEFINED_OBJECT) {
                    return Err(error).context(|| format!("cannot set idle_session_timeout on {}", self.shown));
                }
            }
        }
        Ok(client)
    }

    /// A walsender connection. Its session prints values the way digest sessions do (UTC,
    /// ISO dates, full float digits), so a key read from the stream equals the same key read by
    /// verification or repair.
    pub async fn replication(&self) -> Result<ReplicationConnection, ConnectorError> {
        let mut config = self.config.clone();
        let mut options = config.get_options().map(|o| format!("{o} ")).unwrap_or_default();
        options.push_str(crate::digest::SESSION_OPTIONS);
        config.options(&options);
        ReplicationConnection::connect(&config, &self.tls).await
    }

    /// A session reading the source inside the exported `snapshot`, for the copy's COPY out.
    /// Its session settings are this endpoint's, as `connect`'s are: text passed through to the
    /// target reads the same either way.
    pub async fn snapshot_session(&self, snapshot: &str) -> Result<SnapshotSession, ConnectorError> {
        SnapshotSession::open(&self.config, &self.tls, snapshot).await
    }
}

/// Fails, naming the fix, if the server `client` is on is a standby (in recovery): Switchyard
/// writes to both sides (the source gets its publication and slot, the target the rows, and
/// after a cutover the two trade places), so each must be a primary.
pub async fn refuse_standby(client: &Client, endpoint: &Endpoint, side: &str) -> Result<(), ConnectorError> {
    let in_recovery: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .context(|| format!("cannot ask the {side} whether it is a standby"))?
        .get(0);
    if in_recovery {
        return Err(ConnectorError::config(format!(
            "the {side} {} is a standby (in recovery): Switchyard needs the primary, where it creates its \
             publication and replication slot, and writes. Point the {side} URL at the primary",
            endpoint.shown()
        )));
    }
    Ok(())
}

/// Sets `session_replication_role = replica` on a target session, as PostgreSQL's own logical
/// replication does: foreign key checks and ordinary triggers do not fire for the rows it
/// writes, which the source already checked. It takes superuser (or, on PostgreSQL 15+,
/// `GRANT SET ON PARAMETER session_replication_role`); without it, `writing` ("copying",
/// "applying") goes on with them on, said once in the log. True when it is set.
pub async fn act_as_replica(client: &Client, writing: &str) -> bool {
    match client.batch_execute("SET session_replication_role = replica").await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "{writing} with foreign key checks and triggers on: the target user cannot set session_replication_role");
            false
        }
    }
}

/// Makes this session's commits durable before they return when the server's default would
/// not (`synchronous_commit = off`): a source position is confirmed to the slot once the
/// target transaction holding its changes commits, and the slot never gives those changes
/// again, so that commit must survive a crash of the target. Stronger settings are kept.
/// Returns whether it had to raise the setting.
pub async fn commit_durably(client: &Client) -> Result<bool, ConnectorError> {
    let setting: String =
        client.query_one("SHOW synchronous_commit", &[]).await.context(|| "cannot read synchronous_commit".into())?.get(0);
    if setting != "off" {
        return Ok(false);
    }
    client.batch_execute("SET synchronous_commit = on").await.context(|| "cannot set synchronous_commit".into())?;
    Ok(true)
}

/// Replaces the password of a URL's user-info part with `****`.
pub fn mask_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else { return url.to_string() };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return url.to_string() };
    let user_info = &rest[..at];
    match user_info.find(':') {
        Some(colon) => format!("{}{}:****{}", &url[..scheme_end + 3], &user_info[..colon], &rest[at..]),
        None => url.to_string(),
    }
}

fn password_from_environment(config: &tokio_postgres::Config) -> Option<Vec<u8>> {
    if let Ok(password) = std::env::var("PGPASSWORD") {
        return Some(password.into_bytes());
    }
    let path = std::env::var_os("PGPASSFILE")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".pgpass")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432).to_string();
    let database = config.get_dbname().unwrap_or("").to_string();
    let user = config.get_user().unwrap_or("").to_string();
    pgpass_lookup(&text, [&host, &port, &database, &user]).map(String::into_bytes)
}

/// Finds the password for (host, port, database, user) in a `.pgpass` file's text: the first
/// line whose fields match, `*` matching anything, `\:` and `\\` escaping.
fn pgpass_lookup(text: &str, wanted: [&str; 4]) -> Option<String> {
    text.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let fields = split_pgpass_line(line);
        if fields.len() != 5 {
            return None;
        }
        let matches = fields[..4].iter().zip(wanted).all(|(field, want)| field == "*" || field == want);
        matches.then(|| fields[4].clone())
    })
}

fn split_pgpass_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(escaped) = chars.next() {
                    fields.last_mut().unwrap().push(escaped);
                }
            }
            ':' => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords() {
        assert_eq!(mask_password("postgres://u:secret@h:5/db"), "postgres://u:****@h:5/db");
        assert_eq!(mask_password("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(mask_password("postgres://u:p@ss@h/db?x=@"), "postgres://u:****@h/db?x=@");
        assert_eq!(mask_password("host=h"), "host=h");
    }

    #[test]
    fn sessions_run_without_timeouts_unless_the_url_sets_them() {
        let options = |url: &str| Endpoint::parse(url).unwrap().config.get_options().unwrap().to_string();
        assert_eq!(
            options("postgres://u@h/db"),
            "-c default_transaction_read_only=off -c statement_timeout=0 -c idle_in_transaction_session_timeout=0"
        );
        assert_eq!(
            options("postgres://u@h/db?options=-c%20statement_timeout%3D5min"),
            "-c statement_timeout=5min -c default_transaction_read_only=off -c idle_in_transaction_session_timeout=0"
        );
    }

    #[test]
    fn reads_pgpass_lines() {
        let text = "# comment\nother:5432:*:u:nope\nh:5433:*:u:pa\\:ss\n*:*:*:*:fallback\n";
        assert_eq!(pgpass_lookup(text, ["h", "5433", "db", "u"]).as_deref(), Some("pa:ss"));
        assert_eq!(pgpass_lookup(text, ["x", "1", "db", "v"]).as_deref(), Some("fallback"));
    }
}
