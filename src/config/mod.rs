//! The pipeline file: parse (TOML, `${VAR}` expansion, unknown keys) → validate (pure, returns
//! every problem with its dotted path) → build (in `registry`, which connects).

mod keys;
mod model;
mod parse;
mod validate;

pub use model::*;
pub use parse::{load, parse_str};

use std::fmt;

/// One thing wrong with a pipeline, named by where it is and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path into the pipeline file (`transform[2].column`), or the database object.
    pub at: String,
    pub message: String,
}

impl Problem {
    pub fn new(at: impl Into<String>, message: impl Into<String>) -> Self {
        Problem { at: at.into(), message: message.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Problems that stop a pipeline file from being used at all.
#[derive(Debug)]
pub struct Invalid(pub Vec<Problem>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the pipeline file has {} problem(s):", self.0.len())?;
        for problem in &self.0 {
            writeln!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}
