//! farmctl's library parts: reading `ServerFarm` manifests, choosing ports, and the private
//! PostgreSQL cluster.
//! The farm runner itself lives in the binary (`src/farm.rs`).

pub mod manifest;
pub mod ports;
pub mod postgres;
