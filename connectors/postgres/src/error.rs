//! Classifying PostgreSQL errors into the kinds the runtime acts on.

use switchyard_core::{ConnectorError, ErrorKind};
use tokio_postgres::error::SqlState;

/// Wraps a driver error with what we were doing (`context` names the object), classified by
/// SQLSTATE: connection and server-shutdown errors are transient; the rest stop the pipeline.
pub fn classify(context: impl Into<String>, error: tokio_postgres::Error) -> ConnectorError {
    let kind = kind_of(&error);
    let mut message = context.into();
    if let Some(db) = error.as_db_error() {
        message = format!("{message}: {} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            message.push_str(&format!("; {detail}"));
        }
        if let Some(hint) = db.hint() {
            message.push_str(&format!("; hint: {hint}"));
        }
        return ConnectorError::new(kind, message);
    }
    ConnectorError::new(kind, message).with_source(error)
}

fn kind_of(error: &tokio_postgres::Error) -> ErrorKind {
    let Some(code) = error.code() else {
        // No SQLSTATE: the connection broke or timed out.
        return if error.is_closed() || error.as_db_error().is_none() {
            ErrorKind::Transient
        } else {
            ErrorKind::Definite
        };
    };
    let class = &code.code()[..2];
    if matches!(class, "08" | "57" | "53" | "40") || *code == SqlState::LOCK_NOT_AVAILABLE {
        ErrorKind::Transient
    } else if matches!(class, "28" | "42") && *code != SqlState::UNIQUE_VIOLATION {
        if *code == SqlState::INSUFFICIENT_PRIVILEGE || class == "28" {
            ErrorKind::Config
        } else {
            ErrorKind::Definite
        }
    } else {
        ErrorKind::Definite
    }
}

/// Shorthand for `.map_err(|e| classify(context, e))`.
pub trait PgResultExt<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, ConnectorError>;
}

impl<T> PgResultExt<T> for Result<T, tokio_postgres::Error> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, ConnectorError> {
        self.map_err(|e| classify(context(), e))
    }
}
