//! The managed database's credentials: made once, never replaced while the database holds
//! data, kept out of the garbage collector's reach (no owner reference), and deleted with the
//! farm behind a finalizer. Why: PostgreSQL keeps the password it was initialised with, so a
//! new password locks the units and the app out of their sessions.

use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use stickyfarm_api::farm::{DatabaseDeletePolicy, ServerFarm, labels};
use stickyfarm_api::token::{self, Token};

use crate::build::{self, DatabaseRoles};
use crate::reconcile::{
    Context, Error, FIELD_MANAGER, delete_if, kube_err, publish, publish_problem_once,
};
use crate::status::Problem;

/// How soon a farm whose database Secret is missing is reconciled again.
pub const SECRET_RECHECK: Duration = Duration::from_secs(10);

/// Creates the managed database's credentials once; a Secret that exists is never touched, so
/// a password is never rotated under a running database. A missing Secret gets a new password
/// only for a database that holds no data yet: PostgreSQL keeps the password it was initialised
/// with, so a new one would lock the units out. For an external database, reports a missing
/// Secret. Returns the problem, if any, and which roles the managed database has.
pub(crate) async fn ensure_database_secret(
    farm: &ServerFarm,
    ctx: &Context,
    reference: &ObjectReference,
) -> Result<(Option<Problem>, DatabaseRoles), Error> {
    let ns = farm.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let (secret_name, _) = build::database_secret_ref(farm);
    let existing = read_secret(&secrets, &ns, &secret_name).await?;
    if farm.spec.database.external.is_some() {
        let problem = external_database_problem(farm, &secrets, existing.as_ref()).await?;
        return Ok((problem, DatabaseRoles::default()));
    }
    if let Some(existing) = existing {
        disown_secret(&secrets, farm, &existing).await?;
        return kept_roles(farm, ctx, reference, &secrets, &existing).await;
    }
    if let Some(data) = database_data(farm, ctx).await? {
        let problem = credentials_lost(&ns, &secret_name, &data);
        publish_problem_once(ctx, farm, reference, &problem, "CreateSecret").await;
        // The superuser's Secret exists only for a database made with separate roles.
        let superuser = build::superuser_secret_name(farm);
        let roles = match read_secret(&secrets, &ns, &superuser).await? {
            Some(_) => DatabaseRoles::Separate,
            None => DatabaseRoles::Single,
        };
        return Ok((Some(problem), roles));
    }
    generate_database_credentials(farm, ctx, reference, &secrets).await?;
    Ok((None, DatabaseRoles::Separate))
}

/// An external database: its URL Secret (and CA Secret, if named) must exist.
async fn external_database_problem(
    farm: &ServerFarm,
    secrets: &Api<Secret>,
    url_secret: Option<&Secret>,
) -> Result<Option<Problem>, Error> {
    let (secret_name, key) = build::database_secret_ref(farm);
    let has_key = url_secret.is_some_and(|s| s.data.as_ref().is_some_and(|d| d.contains_key(&key)));
    if !has_key {
        return Ok(Some(Problem::new(
            "DatabaseSecretMissing",
            format!(
                "the external database Secret {secret_name} with key {key} does not exist: create it with the PostgreSQL URL"
            ),
        )));
    }
    let Some(ca) = farm
        .spec
        .database
        .external
        .as_ref()
        .and_then(|e| e.ca.as_ref())
    else {
        return Ok(None);
    };
    let ns = farm.namespace().unwrap_or_default();
    let found = read_secret(secrets, &ns, &ca.secret_name).await?;
    if found.is_some_and(|s| s.data.is_some_and(|d| d.contains_key(&ca.key))) {
        return Ok(None);
    }
    Ok(Some(Problem::new(
        "DatabaseCaMissing",
        format!(
            "the Secret {} with key {} (the CA of the external PostgreSQL's certificate) does not exist: create it with the CA certificate in PEM",
            ca.secret_name, ca.key
        ),
    )))
}

/// The sidecars' Secret exists: which roles the database has (its annotation says), and, for
/// separate roles, whether the other roles' Secrets are still there (they were made before it,
/// so a missing one was lost, and is never made again).
async fn kept_roles(
    farm: &ServerFarm,
    ctx: &Context,
    reference: &ObjectReference,
    secrets: &Api<Secret>,
    sidecars: &Secret,
) -> Result<(Option<Problem>, DatabaseRoles), Error> {
    let separate = sidecars
        .annotations()
        .get(build::ROLES_ANNOTATION)
        .is_some_and(|v| v == "separate");
    if !separate {
        return Ok((None, DatabaseRoles::Single));
    }
    let ns = farm.namespace().unwrap_or_default();
    for other in [
        build::app_secret_name(farm),
        build::superuser_secret_name(farm),
    ] {
        let found = read_secret(secrets, &ns, &other).await?;
        if found.is_none() {
            let evidence = format!("Secret {}", sidecars.name_any());
            let problem = credentials_lost(&ns, &other, &evidence);
            publish_problem_once(ctx, farm, reference, &problem, "CreateSecret").await;
            return Ok((Some(problem), DatabaseRoles::Separate));
        }
    }
    Ok((None, DatabaseRoles::Separate))
}

/// A new database: the roles' Secrets first, the sidecars' (which says the database has
/// separate roles) last. A Secret an interrupted reconcile made already stands: the database is
/// not initialised yet, so its password is still the one that will be used.
async fn generate_database_credentials(
    farm: &ServerFarm,
    ctx: &Context,
    reference: &ObjectReference,
    secrets: &Api<Secret>,
) -> Result<(), Error> {
    let random = || token::random_hex().map_err(|e| Error::Random(e.to_string()));
    for (secret, what) in [
        (
            build::database_superuser_secret(farm, &random()?)?,
            "the database superuser's credentials",
        ),
        (
            build::database_app_secret(farm, &random()?)?,
            "the app's database credentials",
        ),
        (
            build::database_secret(farm, &random()?)?,
            "the sidecars' database credentials",
        ),
    ] {
        create_generated(ctx, secrets, &secret, reference, "CredentialsCreated", what).await?;
    }
    Ok(())
}

/// A Secret of the farm's namespace `ns` by name, or `None` when there is none.
async fn read_secret(secrets: &Api<Secret>, ns: &str, name: &str) -> Result<Option<Secret>, Error> {
    secrets
        .get_opt(name)
        .await
        .map_err(kube_err(format!("read Secret {ns}/{name}")))
}

/// Creates a Secret the operator generated (credentials, tokens) and says so in an Event. A
/// Secret another reconcile (or operator) made first stands: its values are the ones in use.
async fn create_generated(
    ctx: &Context,
    secrets: &Api<Secret>,
    secret: &Secret,
    reference: &ObjectReference,
    reason: &str,
    what: &str,
) -> Result<(), Error> {
    let name = secret.name_any();
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    match secrets.create(&params, secret).await {
        Ok(_) => {
            let note = format!("generated {what} in Secret {name}");
            publish(
                ctx,
                reference,
                EventType::Normal,
                reason,
                "CreateSecret",
                note,
            )
            .await;
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(kube_err(format!(
            "create Secret {}/{name}",
            secret.namespace().unwrap_or_default()
        ))(e)),
    }
}

/// Creates the farm's token Secret (admin and gateway tokens) when absent. One that exists is
/// left as it is: the running gateway and sidecars hold its tokens. A Secret of that name that
/// is not the farm's own is never used or changed: `NameConflict`.
pub(crate) async fn ensure_gateway_tokens(
    farm: &ServerFarm,
    ctx: &Context,
    reference: &ObjectReference,
) -> Result<Option<Problem>, Error> {
    let ns = farm.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let name = build::tokens_secret_name(farm);
    let existing = read_secret(&secrets, &ns, &name).await?;
    if let Some(existing) = existing {
        let uid = farm.metadata.uid.as_deref().unwrap_or_default();
        if !existing.owner_references().iter().any(|o| o.uid == uid) {
            return Ok(Some(Problem::new(
                "NameConflict",
                format!(
                    "Secret {ns}/{name} exists but does not belong to this farm: the operator \
                     neither uses nor changes it. Rename or delete it; the farm's gateway tokens \
                     are generated into that name"
                ),
            )));
        }
        let has = |key: &str| {
            existing
                .data
                .as_ref()
                .is_some_and(|d| d.get(key).is_some_and(|v| !v.0.is_empty()))
        };
        if !(has(build::ADMIN_TOKEN_KEY) && has(build::GATEWAY_TOKEN_KEY)) {
            return Ok(Some(Problem::new(
                "GatewayTokensInvalid",
                format!(
                    "Secret {ns}/{name} lacks the keys {} and {}: delete it and the operator \
                     generates new tokens (restart the farm's pods afterwards)",
                    build::ADMIN_TOKEN_KEY,
                    build::GATEWAY_TOKEN_KEY
                ),
            )));
        }
        return Ok(None);
    }
    let random = |e: token::TokenError| Error::Random(e.to_string());
    let secret = build::tokens_secret(
        farm,
        &Token::generate().map_err(random)?,
        &Token::generate().map_err(random)?,
    )?;
    create_generated(
        ctx,
        &secrets,
        &secret,
        reference,
        "TokensCreated",
        "the gateway's admin and gateway tokens",
    )
    .await?;
    Ok(None)
}

/// Creates the farm's session-id key when absent; one that exists is never replaced (the
/// sessions are stored under it). If it was lost, the new key does not fit the stored sessions:
/// the sidecars then refuse to serve with a message saying how to restore it or start over,
/// rather than act as if no session existed. Farms of earlier versions get their first key
/// here, and the first sidecar with it re-keys their stored sessions.
pub(crate) async fn ensure_session_id_key(
    farm: &ServerFarm,
    ctx: &Context,
    reference: &ObjectReference,
) -> Result<Option<Problem>, Error> {
    let ns = farm.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let name = build::session_id_key_secret_name(farm);
    let existing = read_secret(&secrets, &ns, &name).await?;
    if let Some(existing) = existing {
        let labels = existing.labels();
        if labels.get(labels::FARM).map(String::as_str) != Some(farm.name_any().as_str()) {
            return Ok(Some(Problem::new(
                "NameConflict",
                format!(
                    "Secret {ns}/{name} exists but is not labelled {}={}: the operator neither uses \
                     nor changes it. Rename or delete it; the farm's session-id key is generated \
                     into that name",
                    labels::FARM,
                    farm.name_any()
                ),
            )));
        }
        return Ok(None);
    }
    let key = Token::generate().map_err(|e| Error::Random(e.to_string()))?;
    let secret = build::session_id_key_secret(farm, &key)?;
    create_generated(
        ctx,
        &secrets,
        &secret,
        reference,
        "SessionIdKeyCreated",
        "the session-id key",
    )
    .await?;
    Ok(None)
}

/// What shows that the managed database was initialised (and so holds its password): its
/// volume claim or its StatefulSet. `None` for a database that was never created.
async fn database_data(farm: &ServerFarm, ctx: &Context) -> Result<Option<String>, Error> {
    let ns = farm.namespace().unwrap_or_default();
    let claim = build::database_claim_name(farm);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    if claims
        .get_opt(&claim)
        .await
        .map_err(kube_err(format!("read PersistentVolumeClaim {ns}/{claim}")))?
        .is_some()
    {
        return Ok(Some(format!("PersistentVolumeClaim {claim}")));
    }
    let statefulset = build::database_statefulset_name(farm);
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    Ok(statefulsets
        .get_opt(&statefulset)
        .await
        .map_err(kube_err(format!("read StatefulSet {ns}/{statefulset}")))?
        .map(|_| format!("StatefulSet {statefulset}")))
}

/// Earlier versions made the credentials Secret owned by the farm, so the garbage collector
/// could delete it: drop that owner reference (metadata stays writable on an immutable Secret).
async fn disown_secret(
    secrets: &Api<Secret>,
    farm: &ServerFarm,
    secret: &Secret,
) -> Result<(), Error> {
    let uid = farm.metadata.uid.as_deref().unwrap_or_default();
    let owned = secret
        .owner_references()
        .iter()
        .any(|o| o.uid == uid && o.kind == stickyfarm_api::farm::KIND);
    if !owned {
        return Ok(());
    }
    let keep: Vec<_> = secret
        .owner_references()
        .iter()
        .filter(|o| o.uid != uid)
        .cloned()
        .collect();
    let name = secret.name_any();
    let patch = serde_json::json!({"metadata": {
        "ownerReferences": keep,
        // Only the version that was read: a concurrent change makes this a conflict, retried.
        "resourceVersion": secret.resource_version(),
    }});
    secrets
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(kube_err(format!(
            "remove the farm's owner reference from Secret {}/{name}",
            secret.namespace().unwrap_or_default()
        )))?;
    tracing::info!(secret = %name, "the database credentials are no longer owned by the farm");
    Ok(())
}

/// Adds or removes [`build::DATABASE_FINALIZER`] (a no-op when it is already so). A JSON patch
/// that first tests the finalizer list as read: it never drops another controller's finalizer,
/// and fails only when that list changed meanwhile (the retry reads it again).
pub(crate) async fn set_database_finalizer(
    farms: &Api<ServerFarm>,
    farm: &ServerFarm,
    present: bool,
) -> Result<(), Error> {
    let finalizers = farm.finalizers();
    if finalizers.iter().any(|f| f == build::DATABASE_FINALIZER) == present {
        return Ok(());
    }
    let mut wanted: Vec<String> = finalizers
        .iter()
        .filter(|f| *f != build::DATABASE_FINALIZER)
        .cloned()
        .collect();
    if present {
        wanted.push(build::DATABASE_FINALIZER.to_owned());
    }
    let read = farm
        .metadata
        .finalizers
        .as_ref()
        .map_or(serde_json::Value::Null, |f| serde_json::json!(f));
    let patch = serde_json::json!([
        {"op": "test", "path": "/metadata/finalizers", "value": read},
        {"op": "add", "path": "/metadata/finalizers", "value": wanted},
    ]);
    let name = farm.name_any();
    let action = format!(
        "{} the finalizer {} on ServerFarm {name}",
        if present { "add" } else { "remove" },
        build::DATABASE_FINALIZER
    );
    let patch = serde_json::from_value(patch).map_err(|e| Error::Patch(action.clone(), e))?;
    farms
        .patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .map_err(kube_err(action))?;
    Ok(())
}

/// The farm is being deleted: delete its managed database's credentials and volume claim (the
/// state kept out of the garbage collector's reach), then release the farm. Only objects
/// labelled as this farm's database are deleted, each with its UID as precondition.
pub(crate) async fn delete_database_state(farm: &ServerFarm, ctx: &Context) -> Result<(), Error> {
    if !farm
        .finalizers()
        .iter()
        .any(|f| f == build::DATABASE_FINALIZER)
    {
        return Ok(());
    }
    let ns = farm.namespace().unwrap_or_default();
    let managed = farm.spec.database.external.is_none();
    let policy = farm
        .spec
        .database
        .managed
        .as_ref()
        .map(|m| m.delete_policy)
        .unwrap_or_default();
    if managed && policy == DatabaseDeletePolicy::Delete {
        delete_managed_database_state(farm, ctx).await?;
    }
    // An external database keeps its rows; without the key they are found by nobody and expire.
    delete_database_object::<Secret>(ctx, farm, &build::session_id_key_secret_name(farm)).await?;
    let farms: Api<ServerFarm> = Api::namespaced(ctx.client.clone(), &ns);
    set_database_finalizer(&farms, farm, false).await
}

/// Deletes the managed database's claim and its three credentials Secrets (each only if it is
/// labelled as this farm's database): when the farm goes, or after a switch to an external
/// database, if its delete policy is `Delete`.
pub(crate) async fn delete_managed_database_state(
    farm: &ServerFarm,
    ctx: &Context,
) -> Result<(), Error> {
    for secret in build::managed_database_secret_names(farm) {
        delete_database_object::<Secret>(ctx, farm, &secret).await?;
    }
    delete_database_object::<PersistentVolumeClaim>(ctx, farm, &build::database_claim_name(farm))
        .await
}

async fn delete_database_object<K>(
    ctx: &Context,
    farm: &ServerFarm,
    name: &str,
) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    // Unowned (no owner reference): ours only when labelled as this farm's database.
    delete_if::<K>(farm, ctx, name, |object| {
        let labels = object.labels();
        let ours = labels.get(labels::FARM).map(String::as_str) == Some(farm.name_any().as_str())
            && labels.get(labels::COMPONENT).map(String::as_str)
                == Some(build::component::DATABASE);
        if !ours {
            tracing::warn!(object = %name, kind = K::kind(&()).as_ref(), "not deleting: it is not labelled as this farm's database");
        }
        ours
    })
    .await
    .map(|_| ())
}

/// The managed database's Secret is gone but the database exists: say what to restore.
fn credentials_lost(ns: &str, secret: &str, evidence: &str) -> Problem {
    Problem::new(
        "DatabaseCredentialsMissing",
        format!(
            "Secret {ns}/{secret} with the managed database's credentials is gone, but the database \
             was already initialised with them ({evidence}): the operator will not generate a new \
             password, which would lock the units or the app out. Restore the Secret with all its \
             keys from a backup (kubectl apply -n {ns} -f {secret}.yaml); the farm recovers at the \
             next reconcile"
        ),
    )
}
