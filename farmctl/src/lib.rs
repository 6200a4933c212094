//! farmctl's library parts: the `ServerFarm` CRD, reading manifests, choosing ports, and the
//! private PostgreSQL cluster.
//! The farm runner itself lives in the binary (`src/farm.rs`).

pub mod crd;
pub mod manifest;
pub mod ports;
pub mod postgres;
