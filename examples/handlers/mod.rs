//! The example applications' handlers.

pub mod chat;
pub mod lobby;
