//! End-to-end tests: real PostgreSQL clusters started by the testkit, the real `switchyard`
//! binary run as a child process (so it can be killed with SIGKILL like in production).

mod support;

mod config_errors;
mod consistency;
mod crash_recovery;
mod cutover;
mod deferred_indexes;
mod large;
mod parallel_apply;
mod schema_changes;
mod security;
mod streaming;
mod transforms;
mod types;
mod verify;
