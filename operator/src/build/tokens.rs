//! The farm's tokens (`SECURITY.md`): one Secret `<farm>-gateway-tokens`, generated once by the
//! operator, with
//! - `admin-token`: mounted into the gateway only; unit actions on its control port need it;
//! - `gateway-token`: mounted into the gateway and into each unit's sidecar container (never the
//!   app's); the sidecar believes the gateway's headers only on requests that carry it.
//!
//! Unlike the database credentials it is owned by the farm: losing it loses no data (a new pair
//! is generated, and pods started after that use it).
//!
//! The farm's **session-id key** is in a Secret of its own, `<farm>-session-id-key`, mounted into
//! the sidecar containers only: PostgreSQL knows sessions by a keyed hash of their id. It lives
//! as long as the sessions, like the database credentials: no owner reference, deleted by the
//! operator with the farm (`DATABASE_FINALIZER`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    KeyToPath, ProjectedVolumeSource, Secret, SecretProjection, Volume, VolumeMount,
    VolumeProjection,
};
use kube::ResourceExt;
use stickyfarm_api::farm::ServerFarm;
use stickyfarm_api::token::Token;

use super::{BuildError, FarmRef, component};

pub use stickyfarm_api::farm::{ADMIN_TOKEN_KEY, GATEWAY_TOKEN_KEY};
/// Key of the session-id key in its Secret.
pub const SESSION_ID_KEY_KEY: &str = "session-id-key";
/// Where a pod finds the keys it mounts.
pub const TOKENS_DIR: &str = "/var/run/secrets/stickyfarm";
/// The volume's name in a pod.
const VOLUME: &str = "stickyfarm-tokens";

/// Name of a farm's token Secret.
pub fn tokens_secret_name(farm: &ServerFarm) -> String {
    stickyfarm_api::farm::tokens_secret_name(&farm.name_any())
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

/// Name of a farm's session-id key Secret.
pub fn session_id_key_secret_name(farm: &ServerFarm) -> String {
    format!("{}-session-id-key", farm.name_any())
}

/// The session-id key Secret with a freshly generated key (the operator creates it only when
/// absent and never replaces it: sessions stored under a key are found only with it). Kept out
/// of the garbage collector's reach like the database credentials, and labelled as the farm's
/// database state so the operator deletes it with the farm.
pub fn session_id_key_secret(farm: &ServerFarm, key: &Token) -> Result<Secret, BuildError> {
    let f = FarmRef::new(farm)?;
    let mut metadata = f.meta(session_id_key_secret_name(farm), component::DATABASE);
    metadata.owner_references = None;
    Ok(Secret {
        metadata,
        string_data: Some(BTreeMap::from([(
            SESSION_ID_KEY_KEY.into(),
            key.expose().into(),
        )])),
        type_: Some("Opaque".into()),
        immutable: Some(true),
        ..Secret::default()
    })
}

/// Which of the farm's secrets a pod's container gets as files in [`TOKENS_DIR`].
pub(crate) enum SecretFile {
    /// A key of the token Secret.
    Token(&'static str),
    /// The session-id key.
    SessionIdKey,
}

/// A volume with only `files` (one projected volume, so they share [`TOKENS_DIR`]). Only the
/// containers that mount it see them (Kubernetes' default mode: the pods' users are not known
/// here, so no narrower mode could be readable by them without an fsGroup).
pub(crate) fn volume(f: &FarmRef, files: &[SecretFile]) -> Volume {
    let projection = |secret: String, key: &str| VolumeProjection {
        secret: Some(SecretProjection {
            name: secret,
            items: Some(vec![KeyToPath {
                key: key.into(),
                path: key.into(),
                ..KeyToPath::default()
            }]),
            optional: Some(false),
        }),
        ..VolumeProjection::default()
    };
    Volume {
        name: VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(
                files
                    .iter()
                    .map(|file| match file {
                        SecretFile::Token(key) => projection(tokens_secret_name(f.farm), key),
                        SecretFile::SessionIdKey => {
                            projection(session_id_key_secret_name(f.farm), SESSION_ID_KEY_KEY)
                        }
                    })
                    .collect(),
            ),
            ..ProjectedVolumeSource::default()
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
