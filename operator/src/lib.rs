//! The Stickyfarm operator: reconciles `ServerFarm` resources.
//!
//! The pipeline follows the stackabletech operators: read the farm (a `DeserializeGuard`, so
//! one broken object never stops the others) → validate → build every object with pure
//! functions ([`build`]) → apply them with server-side apply under one field manager → remove
//! what scaling down left behind ([`scale`]) → write the status ([`status`]). Deleting a farm
//! needs no code: every object carries the farm as its controller owner, and the garbage
//! collector removes them.

pub mod build;
pub mod config;
pub mod controller;
pub mod metrics;
pub mod reconcile;
pub mod scale;
pub mod status;
