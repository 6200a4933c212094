//! farmctl's library parts: the `ServerFarm` CRD, reading manifests, choosing ports, the
//! private PostgreSQL cluster, the status table, the local CA of `up --tls`, and the kubectl plugin (`kubectl stickyfarm`).
//! The farm runner itself lives in the binary (`src/farm.rs`).

pub mod crd;
pub mod kubectl;
pub mod manifest;
pub mod ports;
pub mod postgres;
pub mod status;
pub mod tls;
