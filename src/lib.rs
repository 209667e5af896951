//! Switchyard's engine: what to do, never how a database speaks. Connectors are picked in
//! `registry` only.

pub mod api;
pub mod commands;
pub mod config;
pub mod cutover;
pub mod demo;
pub mod reconcile;
pub mod registry;
pub mod runtime;
pub mod transform;
