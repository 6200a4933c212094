//! The farm's tokens (`SECURITY.md`): one Secret `<farm>-gateway-tokens`, generated once by the
//! operator, with
//! - `admin-token`: mounted into the gateway only; unit actions on its control port need it;
//! - `gateway-token`: mounted into the gateway and into each unit's sidecar container (never the
//!   app's); the sidecar believes the gateway's headers only on requests that carry it.
//!
//! Unlike the database credentials it is owned by the farm: losing it loses no data (a new pair
//! is generated, and pods started after that use it).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{KeyToPath, Secret, SecretVolumeSource, Volume, VolumeMount};
use kube::ResourceExt;
use stickyfarm_api::farm::ServerFarm;
use stickyfarm_api::token::Token;

use super::{BuildError, FarmRef, component};

/// Key of the admin token.
pub const ADMIN_TOKEN_KEY: &str = "admin-token";
/// Key of the gateway token.
pub const GATEWAY_TOKEN_KEY: &str = "gateway-token";
/// Where a pod finds the keys it mounts.
pub const TOKENS_DIR: &str = "/var/run/secrets/stickyfarm";
/// The volume's name in a pod.
const VOLUME: &str = "stickyfarm-tokens";

/// Name of a farm's token Secret.
pub fn tokens_secret_name(farm: &ServerFarm) -> String {
    format!("{}-gateway-tokens", farm.name_any())
}

/// The token Secret with freshly generated tokens (the operator creates it only when absent).
pub fn tokens_secret(
    farm: &ServerFarm,
    admin: &Token,
    gateway: &Token,
) -> Result<Secret, BuildError> {
    let f = FarmRef::new(farm)?;
    Ok(Secret {
        metadata: f.meta(tokens_secret_name(farm), component::GATEWAY),
        string_data: Some(BTreeMap::from([
            (ADMIN_TOKEN_KEY.into(), admin.expose().into()),
            (GATEWAY_TOKEN_KEY.into(), gateway.expose().into()),
        ])),
        type_: Some("Opaque".into()),
        immutable: Some(true),
        ..Secret::default()
    })
}

/// A volume with only `keys` of the token Secret. Only the containers that mount it see the
/// files (Kubernetes' default mode: the pods' users are not known here, so no narrower mode
/// could be readable by them without an fsGroup).
pub(crate) fn volume(f: &FarmRef, keys: &[&str]) -> Volume {
    Volume {
        name: VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(tokens_secret_name(f.farm)),
            items: Some(
                keys.iter()
                    .map(|k| KeyToPath {
                        key: (*k).into(),
                        path: (*k).into(),
                        ..KeyToPath::default()
                    })
                    .collect(),
            ),
            optional: Some(false),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Where a container sees the volume (read-only).
pub(crate) fn mount() -> VolumeMount {
    VolumeMount {
        name: VOLUME.into(),
        mount_path: TOKENS_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// The file of one key inside a container.
pub(crate) fn file(key: &str) -> String {
    format!("{TOKENS_DIR}/{key}")
}
