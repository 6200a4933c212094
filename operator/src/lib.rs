//! The Stickyfarm operator: reconciles `ServerFarm` resources.
//!
//! The pipeline follows the stackabletech operators: read the farm (a `DeserializeGuard`, so
//! one broken object never stops the others) → validate → build every object with pure
//! functions ([`build`]) → apply them with server-side apply under one field manager → prune
//! what the build no longer produces (drained units' Services, a managed database the farm
//! switched away from) → write the status ([`status`]). Deleting a farm
//! needs little code: every object but the managed database's credentials and volume claim
//! carries the farm as its controller owner, and the garbage collector removes them; those two
//! ([`credentials`]) are deleted by the operator, behind a finalizer.

pub mod build;
pub mod config;
pub mod controller;
pub mod credentials;
pub mod metrics;
pub mod reconcile;
pub mod scale;
pub mod status;
