use std::fmt;

/// What the runtime does about an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A dropped connection, a timeout, a server restarting: back off, reconnect, resume from the
    /// checkpoint.
    Transient,
    /// The data or the servers are in a state the pipeline must not go past: stop and say what to fix.
    Definite,
    /// A setting or privilege is wrong; `check` reports these before anything runs.
    Config,
    /// A type, table or change the pipeline cannot carry.
    Unsupported,
    /// Switchyard itself is wrong.
    Bug,
    /// Something changed under the work in hand (e.g. rows were repaired while a batch was being
    /// prepared): redo it from the checkpoint, at once.
    Conflict,
}

/// An error from a connector: its kind and a message that names the object and the remedy.
#[derive(Debug, thiserror::Error)]
pub struct ConnectorError {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ConnectorError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ConnectorError { kind, message: message.into(), source: None }
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }
    pub fn definite(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Definite, message)
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
    pub fn bug(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Bug, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    /// Whether redoing the work from the checkpoint is the answer.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, ErrorKind::Transient | ErrorKind::Conflict)
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConnectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}
