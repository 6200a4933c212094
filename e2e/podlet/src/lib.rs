//! The podlet: a node agent for tests. It registers a Node, keeps its Lease fresh, and runs the
//! pods the real scheduler binds to it as local processes, each pod in its own network
//! namespace on a private bridge, so the real controllers drive real Stickyfarm processes.
//!
//! What it emulates and what it does not is listed in `e2e/podlet/README.md`.

pub mod api_forward;
pub mod enter;
pub mod env;
pub mod hosts;
pub mod images;
pub mod net;
pub mod node;
pub mod pod;
pub mod probe;
pub mod status;
pub mod supervisor;
pub mod volumes;

use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Everything the podlet was told on its command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Name of the Node it registers.
    pub node_name: String,
    /// Pod folders, volumes, logs.
    pub state_dir: PathBuf,
    /// The bridge's name.
    pub bridge: String,
    /// The bridge's address; pods get the others of its /24.
    pub bridge_ip: Ipv4Addr,
    /// Port on the bridge's address where pods reach the API server.
    pub api_port: u16,
    /// This program, for `enter`.
    pub self_exe: PathBuf,
    /// `ip` of iproute2.
    pub ip_command: PathBuf,
}

/// What went wrong, in the podlet's words.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Setting up the node, a pod's network or its folders failed.
    #[error("{what} failed: {detail}")]
    Setup {
        /// What was being done.
        what: String,
        /// Why it failed.
        detail: String,
    },
    /// A Kubernetes API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    pub(crate) fn setup(what: impl Into<String>, detail: impl ToString) -> Self {
        Error::Setup {
            what: what.into(),
            detail: detail.to_string(),
        }
    }

    pub(crate) fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let what = what.into();
        move |source| Error::Kube { what, source }
    }
}
