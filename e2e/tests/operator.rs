//! The chart and the operator against a real API server: the CRD, server-side apply, RBAC (the
//! operator acts as the chart's ServiceAccount), owner references and garbage collection are
//! the API server's and the controller manager's, not a mock's. No node runs pods here: pod
//! readiness is simulated by patching pod status.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use stickyfarm_api::farm::ServerFarm;
use stickyfarm_e2e::*;

const WAIT: Duration = Duration::from_secs(90);

/// The keys of a farm's Secrets whose values are credentials (the managed database's Secrets
/// hold `password` and a `url` with it; the tokens Secret the rest).
const CREDENTIAL_KEYS: [&str; 5] = [
    "password",
    "url",
    stickyfarm_operator::build::tokens::ADMIN_TOKEN_KEY,
    stickyfarm_operator::build::tokens::GATEWAY_TOKEN_KEY,
    stickyfarm_operator::build::tokens::SESSION_ID_KEY_KEY,
];

fn example(rel: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(rel);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

/// `kubectl apply -f` of a farm, as its user would.
async fn apply_farm(client: &Client, ns: &str, farm: &Value) -> anyhow::Result<ServerFarm> {
    let api: Api<ServerFarm> = Api::namespaced(client.clone(), ns);
    let name = farm["metadata"]["name"].as_str().unwrap().to_owned();
    Ok(api
        .patch(
            &name,
            &PatchParams::apply("kubectl-e2e").force(),
            &Patch::Apply(farm),
        )
        .await?)
}

/// Name → UID of the objects of one kind that match `selector`.
async fn uids<K>(
    client: &Client,
    ns: &str,
    selector: &str,
) -> anyhow::Result<BTreeMap<String, String>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .iter()
        .map(|o| (o.name_any(), o.uid().unwrap_or_default()))
        .collect())
}

async fn names<K>(client: &Client, ns: &str, selector: &str) -> anyhow::Result<BTreeSet<String>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Ok(uids::<K>(client, ns, selector).await?.into_keys().collect())
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

async fn farm_status(client: &Client, ns: &str, name: &str) -> anyhow::Result<Value> {
    let api: Api<ServerFarm> = Api::namespaced(client.clone(), ns);
    let farm = api.get(name).await?;
    Ok(serde_json::to_value(&farm)?["status"].clone())
}

fn condition(status: &Value, t: &str) -> Option<Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
        .cloned()
}

/// Marks a pod Ready with an IP of its own, as a kubelet would.
async fn make_ready(client: &Client, ns: &str, pod: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let n = pod
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    let ip = format!("10.244.{}.{}", (n >> 8) % 250 + 1, n % 250 + 1);
    let status = json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
        ],
    }});
    pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

struct Cluster {
    kubeconfig: PathBuf,
    admin: Client,
}

async fn cluster() -> Option<Cluster> {
    let kubeconfig = kubeconfig()?;
    let admin = admin(&kubeconfig).await.expect("the cluster is reachable");
    install_chart(&kubeconfig)
        .await
        .expect("helm installs the chart");
    Some(Cluster { kubeconfig, admin })
}

/// The operator for one namespace, with a short resync: it may not watch Secrets (its
/// ClusterRole never lists them), so it sees a deleted one at its next reconcile; 5 s makes that
/// prompt here instead of waiting for some other event to wake it.
async fn operator_watching(c: &Cluster, ns: &str) -> anyhow::Result<Operator> {
    Operator::start(
        &c.kubeconfig,
        &[
            "--watch-namespace",
            ns,
            "--leader-elect",
            "false",
            "--resync",
            "5s",
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_an_established_crd_and_least_privilege_rbac() -> anyhow::Result<()> {
    let Some(c) = cluster().await else {
        return Ok(());
    };
    let crds: Api<CustomResourceDefinition> = Api::all(c.admin.clone());
    eventually(WAIT, "the ServerFarm CRD is Established", || async {
        let crd = crds.get("serverfarms.stickyfarm.dev").await?;
        Ok(crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True"))
    })
    .await?;
    let crd = crds.get("serverfarms.stickyfarm.dev").await?;
    assert_eq!(crd.annotations()["helm.sh/resource-policy"], "keep");
    let roles: Api<ClusterRole> = Api::all(c.admin.clone());
    let role = roles.get(RELEASE).await?;
    assert_eq!(role.rules.as_ref().map(Vec::len), Some(14));
    let sas: Api<ServiceAccount> = Api::namespaced(c.admin.clone(), RELEASE_NAMESPACE);
    assert!(sas.get_opt(OPERATOR_ACCOUNT).await?.is_some());
    // The operator's identity (impersonated, as the operator runs in these tests) has exactly
    // the chart's rights: reading one Secret is allowed, listing Secrets or touching
    // Deployments outside what it reconciles is not.
    let operator = as_operator(&c.kubeconfig).await?;
    let forbidden = |e: kube::Error| matches!(e, kube::Error::Api(ref s) if s.code == 403);
    let secrets: Api<Secret> = Api::all(operator.clone());
    let err = secrets
        .list(&ListParams::default())
        .await
        .expect_err("listing Secrets is not granted");
    assert!(forbidden(err), "listing Secrets must be Forbidden");
    let their_deployments: Api<Deployment> = Api::namespaced(operator.clone(), RELEASE_NAMESPACE);
    let err = their_deployments
        .delete(RELEASE, &DeleteParams::default())
        .await
        .expect_err("deleting Deployments is not granted");
    assert!(forbidden(err), "deleting a Deployment must be Forbidden");
    let deployments: Api<Deployment> = Api::namespaced(c.admin.clone(), RELEASE_NAMESPACE);
    let op = deployments.get(RELEASE).await?;
    assert_eq!(
        op.spec
            .template
            .spec
            .unwrap()
            .service_account_name
            .as_deref(),
        Some(OPERATOR_ACCOUNT)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_serverfarms_are_refused_by_the_api_server() -> anyhow::Result<()> {
    let Some(c) = cluster().await else {
        return Ok(());
    };
    namespace(&c.admin, "e2e-invalid").await?;
    let api: Api<ServerFarm> = Api::namespaced(c.admin.clone(), "e2e-invalid");
    let app = json!({"image": "x"});
    let cases = [
        ("shop", json!({"replicas": 0, "app": app}), "spec.replicas"),
        (
            "shop",
            json!({"app": app, "gateway": {"policy": "fastest"}}),
            "fastest",
        ),
        (
            "shop",
            json!({"app": app, "sessionPersistence": {"idleTimeout": "5 minutes"}}),
            "idleTimeout",
        ),
        (
            "shop",
            json!({"app": app, "gateway": {"unitAddressing": "host"}}),
            "unitAddressing host needs farmHost",
        ),
        (
            "shop",
            json!({"app": app, "database": {"external": {"secretName": "pg"}, "managed": {}}}),
            "choose external or managed",
        ),
        (
            "shop",
            json!({"app": app, "gateway": {"healthCheck": {"interval": "1s", "timeout": "5s"}}}),
            "timeout must not be longer",
        ),
        (
            "shop",
            json!({"app": app, "sessionPersistence": {"sessionName": "sf_unit"}}),
            "sessionName must not be one of",
        ),
        (
            "shop",
            json!({"app": app, "gateway": {"port": 80, "tls": {"secretName": "shop-tls", "redirectHttp": true}}}),
            "tls.redirectHttp uses the Service's port 80",
        ),
        (
            "shop",
            json!({"app": app, "gateway": {"tls": {"secretName": "Shop_TLS"}}}),
            "secretName",
        ),
        // A collector is a URL over HTTP(S); the share of traces kept is 0 to 1.
        (
            "shop",
            json!({"app": app, "tracing": {"otlpEndpoint": "file:///etc/passwd"}}),
            "spec.tracing.otlpEndpoint",
        ),
        (
            "shop",
            json!({"app": app, "tracing": {"samplingRatio": 2}}),
            "spec.tracing.samplingRatio",
        ),
        ("shop.eu", json!({"app": app}), "DNS label"),
        // Nothing grants more than Pod Security "restricted".
        (
            "shop",
            json!({"app": app, "pod": {"securityContext": {"runAsUser": 0}}}),
            "pod.securityContext.runAsUser: 0 (root) is not allowed",
        ),
        (
            "shop",
            json!({"app": app, "pod": {"securityContext": {"seccompProfile": {"type": "Unconfined"}}}}),
            "pod.securityContext.seccompProfile.type",
        ),
        (
            "shop",
            json!({"app": {"image": "x", "livenessProbe": {"httpGet": {"host": "169.254.169.254", "port": 80, "path": "/"}}}}),
            "app.livenessProbe: httpGet.host and tcpSocket.host are not allowed",
        ),
        // Fields that would grant more are not in the schema at all.
        (
            "shop",
            json!({"app": app, "pod": {"hostNetwork": true}}),
            "hostNetwork",
        ),
        (
            "shop",
            json!({"app": {"image": "x", "securityContext": {"privileged": true}}}),
            "securityContext",
        ),
    ];
    for (name, spec, expected) in cases {
        let raw = json!({
            "apiVersion": "stickyfarm.dev/v1alpha1", "kind": "ServerFarm",
            "metadata": {"name": name}, "spec": spec,
        });
        let err = api
            .patch(
                name,
                &PatchParams::apply("kubectl-e2e"),
                &Patch::Apply(&raw),
            )
            .await
            .expect_err(&format!("{spec} must be refused"));
        let text = err.to_string();
        assert!(
            text.contains(expected),
            "refusing {spec}: expected {expected:?} in {text}"
        );
        // CEL and schema refusals are 422; server-side apply refuses a field the schema does
        // not declare before validation (500 "field not declared in schema").
        assert!(
            ["422", "Invalid", "field not declared in schema"]
                .iter()
                .any(|code| text.contains(code)),
            "{text}"
        );
    }
    assert!(
        api.get_opt("shop").await?.is_none() && api.get_opt("shop.eu").await?.is_none(),
        "nothing was stored"
    );
    Ok(())
}

/// Every example farm, reconciled by the operator acting as the chart's ServiceAccount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_becomes_its_objects_and_pods() -> anyhow::Result<()> {
    let Some(c) = cluster().await else {
        return Ok(());
    };
    for (file, ns) in [
        ("serverfarms/minimal.yaml", "e2e-minimal"),
        ("serverfarms/full.yaml", "e2e-full"),
        ("serverfarms/external-database.yaml", "e2e-external"),
        ("webstore.yaml", "e2e-webstore"),
    ] {
        namespace(&c.admin, ns).await?;
        let farm = example(file);
        let name = farm["metadata"]["name"].as_str().unwrap().to_owned();
        let replicas = farm["spec"]["replicas"].as_u64().unwrap_or(3) as usize;
        if file.contains("external") {
            let secrets: Api<Secret> = Api::namespaced(c.admin.clone(), ns);
            secrets
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({
                        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shop-pg"},
                        "stringData": {"url": "postgres://u:p@pg.example:5432/sessions"},
                    }))?,
                )
                .await?;
            secrets
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({
                        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shop-pg-ca"},
                        "stringData": {"ca.crt": stickyfarm_testkit::TestCa::new(&["pg.example"]).ca_pem},
                    }))?,
                )
                .await?;
        }
        if file.contains("full") {
            // The full example names a priority class; the Priority admission plugin needs it.
            let pcs: Api<k8s_openapi::api::scheduling::v1::PriorityClass> =
                Api::all(c.admin.clone());
            let _ = pcs
                .patch(
                    "commerce-critical",
                    &PatchParams::apply("e2e"),
                    &Patch::Apply(json!({
                        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                        "metadata": {"name": "commerce-critical"}, "value": 1000,
                    })),
                )
                .await?;
        }
        // The full example asks for a LoadBalancer: allowed here as the chart value
        // allowedServiceTypes would allow it.
        let op = Operator::start(
            &c.kubeconfig,
            &[
                "--watch-namespace",
                ns,
                "--leader-elect",
                "false",
                "--allowed-service-types",
                "ClusterIP,LoadBalancer",
            ],
        )
        .await?;
        apply_farm(&c.admin, ns, &farm).await?;

        let farm_label = format!("stickyfarm.dev/farm={name}");
        let units: BTreeSet<String> = (0..replicas).map(|i| format!("{name}-{i}")).collect();
        let managed = !file.contains("external");
        eventually(WAIT, &format!("{file}: every object applied"), || async {
            let services = names::<Service>(&c.admin, ns, &farm_label).await?;
            let mut want = units.clone();
            want.extend([format!("{name}-units"), format!("{name}-gateway")]);
            if managed {
                want.insert(format!("{name}-db"));
            }
            Ok(services == want
                && names::<StatefulSet>(&c.admin, ns, &farm_label).await?.len()
                    == 1 + usize::from(managed)
                && names::<Deployment>(&c.admin, ns, &farm_label).await?
                    == set(&[&format!("{name}-gateway")])
                && names::<NetworkPolicy>(&c.admin, ns, &farm_label)
                    .await?
                    .len()
                    == 2 + usize::from(managed)
                && names::<PodDisruptionBudget>(&c.admin, ns, &farm_label)
                    .await?
                    .len()
                    == 1
                && names::<ServiceAccount>(&c.admin, ns, &farm_label)
                    .await?
                    .len()
                    == 1
                && names::<Role>(&c.admin, ns, &farm_label).await?.len() == 1
                && names::<RoleBinding>(&c.admin, ns, &farm_label).await?.len() == 1)
        })
        .await?;
        // Applied server-side by the operator's one field manager.
        let sts: Api<StatefulSet> = Api::namespaced(c.admin.clone(), ns);
        let managers: Vec<(String, String)> = sts
            .get(&name)
            .await?
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                (
                    m.manager.unwrap_or_default(),
                    m.operation.unwrap_or_default(),
                )
            })
            .collect();
        assert!(
            managers.contains(&("stickyfarm-operator".into(), "Apply".into())),
            "{managers:?}"
        );
        if managed {
            let secrets: Api<Secret> = Api::namespaced(c.admin.clone(), ns);
            let secret = secrets.get(&format!("{name}-db")).await?;
            let data = secret.data.clone().unwrap_or_default();
            let url = String::from_utf8(data["url"].0.clone())?;
            assert!(url.starts_with("postgres://stickyfarm:"), "{url}");
            assert!(
                url.ends_with(&format!("@{name}-db.{ns}.svc:5432/stickyfarm")),
                "{url}"
            );
            // Not owned: the garbage collector can never take the database's password.
            assert_eq!(secret.metadata.owner_references, None);
            assert_eq!(secret.labels()["stickyfarm.dev/farm"], name);
        }
        // The gateway's tokens: generated by the operator (as the chart's ServiceAccount),
        // owned by the farm, two independent 256-bit secrets.
        let secrets: Api<Secret> = Api::namespaced(c.admin.clone(), ns);
        let tokens = secrets.get(&format!("{name}-gateway-tokens")).await?;
        let data = tokens.data.clone().unwrap_or_default();
        let (admin, gateway) = (&data["admin-token"].0, &data["gateway-token"].0);
        assert_eq!((admin.len(), gateway.len()), (64, 64));
        assert_ne!(admin, gateway);
        assert_eq!(tokens.owner_references()[0].kind, "ServerFarm");
        // The NetworkPolicies as the API server stores them: scrapers only from the operator's
        // namespace (the default), the gateway's control port admitted to nobody.
        let policies: Api<NetworkPolicy> = Api::namespaced(c.admin.clone(), ns);
        let gateway_policy = policies
            .get(&format!("{name}-gateway"))
            .await?
            .spec
            .context("spec")?;
        let rules = gateway_policy.ingress.unwrap_or_default();
        let port_of = |r: &k8s_openapi::api::networking::v1::NetworkPolicyIngressRule| {
            r.ports.as_ref().and_then(|p| p[0].port.clone())
        };
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        assert_eq!(
            rules.iter().map(port_of).collect::<Vec<_>>(),
            [Some(IntOrString::Int(8000)), Some(IntOrString::Int(9465))],
            "clients and scrapers only; never the control port 9466"
        );
        assert!(rules[0].from.is_none(), "clients from anywhere");
        let scrapers = rules[1].from.clone().unwrap_or_default();
        assert_eq!(scrapers.len(), 1);
        let selector = scrapers[0]
            .namespace_selector
            .clone()
            .context("a namespace selector")?;
        let expressions = selector.match_expressions.unwrap_or_default();
        assert_eq!(expressions[0].key, "kubernetes.io/metadata.name");
        assert_eq!(
            expressions[0].values.as_deref(),
            Some(&[RELEASE_NAMESPACE.to_owned()][..])
        );
        assert!(scrapers[0].pod_selector.is_none());
        // The StatefulSet controller creates the unit pods; the status lists them with their
        // UIDs as instance ids.
        eventually(
            WAIT,
            &format!("{file}: unit pods in the status"),
            || async {
                let pods: Api<Pod> = Api::namespaced(c.admin.clone(), ns);
                let unit_pods = pods
                    .list(
                        &ListParams::default()
                            .labels(&format!("{farm_label},stickyfarm.dev/component=unit")),
                    )
                    .await?
                    .items;
                if unit_pods.len() != replicas {
                    return Ok(false);
                }
                let status = farm_status(&c.admin, ns, &name).await?;
                Ok(unit_pods.iter().all(|p| {
                    status["units"].as_array().is_some_and(|us| {
                        us.iter().any(|u| {
                            u["pod"] == p.name_any()
                                && u["instanceId"].as_str() == p.metadata.uid.as_deref()
                        })
                    })
                }))
            },
        )
        .await?;
        let status = farm_status(&c.admin, ns, &name).await?;
        assert_eq!(status["unitsReady"], format!("0/{replicas}"));
        assert_eq!(condition(&status, "Ready").unwrap()["status"], "False");
        assert_eq!(
            condition(&status, "Degraded").unwrap()["status"],
            "False",
            "{status:#}"
        );
        op.stop().await?;
    }
    Ok(())
}

/// UIDs of the farm `shop`'s objects that outlive scaling to 2 units (kind/name → UID).
async fn lasting_uids(client: &Client, ns: &str) -> anyhow::Result<BTreeMap<String, String>> {
    const FARM: &str = "stickyfarm.dev/farm=shop";
    let kinds = [
        ("Secret", uids::<Secret>(client, ns, FARM).await?),
        ("StatefulSet", uids::<StatefulSet>(client, ns, FARM).await?),
        ("Deployment", uids::<Deployment>(client, ns, FARM).await?),
        ("Service", uids::<Service>(client, ns, FARM).await?),
        (
            "ServiceAccount",
            uids::<ServiceAccount>(client, ns, FARM).await?,
        ),
        ("Role", uids::<Role>(client, ns, FARM).await?),
        ("RoleBinding", uids::<RoleBinding>(client, ns, FARM).await?),
        (
            "NetworkPolicy",
            uids::<NetworkPolicy>(client, ns, FARM).await?,
        ),
        (
            "PodDisruptionBudget",
            uids::<PodDisruptionBudget>(client, ns, FARM).await?,
        ),
    ];
    let out: BTreeMap<String, String> = kinds
        .into_iter()
        .flat_map(|(kind, found)| {
            found
                .into_iter()
                .map(move |(n, u)| (format!("{kind}/{n}"), u))
        })
        // Units 2, 3, 4 go with the scale-down to 2.
        .filter(|(key, _)| {
            !["Service/shop-2", "Service/shop-3", "Service/shop-4"].contains(&key.as_str())
        })
        .collect();
    // Every kind is there: an object missing its farm label would silently escape the check.
    anyhow::ensure!(
        out.len() == 20,
        "expected the farm's 20 lasting objects (5 Secrets among them: 3 database roles, tokens, session-id key), found {out:?}"
    );
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_readiness_secret_and_deletion_with_a_leader_lease() -> anyhow::Result<()> {
    let Some(c) = cluster().await else {
        return Ok(());
    };
    let ns = "e2e-scale";
    namespace(&c.admin, ns).await?;
    let identity = "e2e-operator-0";
    let op = Operator::start(
        &c.kubeconfig,
        &[
            "--watch-namespace",
            ns,
            "--identity",
            identity,
            "--lease-name",
            "stickyfarm-e2e",
        ],
    )
    .await?;
    // The operator leads through a Lease in the release namespace (its Role allows exactly that).
    let leases: Api<Lease> = Api::namespaced(c.admin.clone(), RELEASE_NAMESPACE);
    eventually(WAIT, "the operator holds the lease", || async {
        let lease = leases.get_opt("stickyfarm-e2e").await?;
        Ok(lease
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .as_deref()
            == Some(identity))
    })
    .await?;

    let mut farm = example("serverfarms/minimal.yaml");
    farm["spec"]["replicas"] = json!(3);
    apply_farm(&c.admin, ns, &farm).await?;
    let unit_services = |n: usize| {
        (0..n)
            .map(|i| format!("shop-{i}"))
            .collect::<BTreeSet<String>>()
    };
    let unit_label = "stickyfarm.dev/farm=shop,stickyfarm.dev/unit";
    eventually(WAIT, "3 unit Services", || async {
        Ok(names::<Service>(&c.admin, ns, unit_label).await? == unit_services(3))
    })
    .await?;

    // Readiness: every unit pod and the gateway pod become Ready (as kubelets would report).
    let pods: Api<Pod> = Api::namespaced(c.admin.clone(), ns);
    eventually(WAIT, "the farm becomes Ready once its pods are", || async {
        for p in pods
            .list(&ListParams::default().labels("stickyfarm.dev/farm=shop"))
            .await?
            .items
        {
            if p.metadata.labels.as_ref().is_some_and(|l| {
                l.get("stickyfarm.dev/component")
                    .is_some_and(|c| c != "database")
            }) && !stickyfarm_operator::status::pod_ready(&p)
            {
                make_ready(&c.admin, ns, &p.name_any()).await?;
            }
        }
        let status = farm_status(&c.admin, ns, "shop").await?;
        Ok(
            condition(&status, "Ready").is_some_and(|r| r["status"] == "True")
                && status["unitsReady"] == "3/3",
        )
    })
    .await?;

    // The gateway, with the farm's own ServiceAccount, finds the units in the EndpointSlices
    // of their Services: pod IPs, pod UIDs as instance ids.
    let gateway = Gateway::start(&c.kubeconfig, ns, "shop").await?;
    let uid0 = pods.get("shop-0").await?.metadata.uid.unwrap_or_default();
    let uid2 = pods.get("shop-2").await?.metadata.uid.unwrap_or_default();
    eventually(
        WAIT,
        "the gateway lists the 3 units from EndpointSlices",
        || async {
            let units = gateway.units().await?;
            Ok(units.len() == 3
                && units.iter().all(|u| {
                    u["admin"] == "enabled"
                        && u["address"]
                            .as_str()
                            .is_some_and(|a| a.starts_with("10.244.") && a.ends_with(":8080"))
                })
                && units
                    .iter()
                    .any(|u| u["name"] == "shop-0" && u["instance"] == uid0.as_str())
                && units
                    .iter()
                    .any(|u| u["name"] == "shop-2" && u["instance"] == uid2.as_str()))
        },
    )
    .await?;

    // The generated Secret survives later reconciles untouched, and so does every object that
    // scaling does not remove: a changed UID means something deleted it while the farm existed
    // (a failed run's audit log, printed by scripts/test, says who).
    let secrets: Api<Secret> = Api::namespaced(c.admin.clone(), ns);
    let secret_before = secrets.get("shop-db").await?;
    let lasting_before = lasting_uids(&c.admin, ns).await?;

    // 3 → 5: two more units.
    farm["spec"]["replicas"] = json!(5);
    apply_farm(&c.admin, ns, &farm).await?;
    eventually(WAIT, "5 unit Services", || async {
        Ok(names::<Service>(&c.admin, ns, unit_label).await? == unit_services(5))
    })
    .await?;
    // The unit Services are applied before the StatefulSet in the same reconcile: wait for it.
    let sts: Api<StatefulSet> = Api::namespaced(c.admin.clone(), ns);
    eventually(WAIT, "the StatefulSet at 5 replicas", || async {
        Ok(sts.get("shop").await?.spec.replicas == Some(5))
    })
    .await?;

    // The new units' pods report ready too, so the gateway sees all five.
    eventually(WAIT, "units 3 and 4 ready", || async {
        for name in ["shop-3", "shop-4"] {
            match pods.get_opt(name).await? {
                Some(p) if stickyfarm_operator::status::pod_ready(&p) => {}
                Some(_) => make_ready(&c.admin, ns, name).await?,
                None => return Ok(false),
            }
        }
        Ok(gateway.units().await?.len() == 5)
    })
    .await?;

    // 5 → 2: units 2..5 drain (labelled), then go.
    farm["spec"]["replicas"] = json!(2);
    apply_farm(&c.admin, ns, &farm).await?;
    eventually(WAIT, "units 2, 3, 4 draining", || async {
        let draining = names::<Service>(
            &c.admin,
            ns,
            "stickyfarm.dev/farm=shop,stickyfarm.dev/unit-state=draining",
        )
        .await?;
        Ok(draining == set(&["shop-2", "shop-3", "shop-4"]))
    })
    .await?;
    eventually(WAIT, "the farm reports Progressing: Draining", || async {
        let status = farm_status(&c.admin, ns, "shop").await?;
        Ok(condition(&status, "Progressing").is_some_and(|p| p["reason"] == "Draining"))
    })
    .await?;
    // The gateway sees the draining label through the EndpointSlices (copied from the Services).
    eventually(WAIT, "the gateway drains units 2, 3, 4", || async {
        let draining: BTreeSet<String> = gateway
            .units()
            .await?
            .iter()
            .filter(|u| u["admin"] == "draining")
            .map(|u| u["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        Ok(draining == set(&["shop-2", "shop-3", "shop-4"]))
    })
    .await?;
    eventually(WAIT, "units 2, 3, 4 removed after the drain", || async {
        Ok(
            names::<Service>(&c.admin, ns, unit_label).await? == unit_services(2)
                && sts.get("shop").await?.spec.replicas == Some(2),
        )
    })
    .await?;
    eventually(WAIT, "the gateway drops the removed units", || async {
        let names: BTreeSet<String> = gateway
            .units()
            .await?
            .iter()
            .map(|u| u["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        Ok(names == set(&["shop-0", "shop-1"]))
    })
    .await?;
    drop(gateway);
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.admin.clone(), ns);
    let reasons: BTreeSet<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for r in ["CredentialsCreated", "DrainingUnits", "UnitsRemoved"] {
        assert!(reasons.contains(r), "no {r} Event in {reasons:?}");
    }
    let secret_after = secrets.get("shop-db").await?;
    assert_eq!(
        secret_after.data, secret_before.data,
        "the credentials were never rewritten"
    );
    assert_eq!(
        secret_after.metadata.resource_version,
        secret_before.metadata.resource_version
    );
    let lasting_after = lasting_uids(&c.admin, ns).await?;
    let replaced: Vec<&String> = lasting_before
        .iter()
        .filter(|(name, uid)| lasting_after.get(*name) != Some(uid))
        .map(|(name, _)| name)
        .collect();
    assert!(
        replaced.is_empty(),
        "deleted and made again while the farm existed: {replaced:?}"
    );

    // Deleting the farm: the garbage collector removes everything it owned.
    let farms: Api<ServerFarm> = Api::namespaced(c.admin.clone(), ns);
    farms.delete("shop", &DeleteParams::default()).await?;
    eventually(WAIT, "everything the farm owned is gone", || async {
        Ok(names::<Service>(&c.admin, ns, "stickyfarm.dev/farm=shop")
            .await?
            .is_empty()
            && names::<StatefulSet>(&c.admin, ns, "stickyfarm.dev/farm=shop")
                .await?
                .is_empty()
            && names::<Deployment>(&c.admin, ns, "stickyfarm.dev/farm=shop")
                .await?
                .is_empty()
            && names::<NetworkPolicy>(&c.admin, ns, "stickyfarm.dev/farm=shop")
                .await?
                .is_empty()
            && secrets.get_opt("shop-db").await?.is_none())
    })
    .await?;
    op.stop().await?;
    Ok(())
}

/// The managed database's password outlives whatever deletes the farm's objects: its Secret and
/// volume claim have no owner reference (the garbage collector cannot take them); a Secret that
/// is gone anyway is not replaced by a new password while the database exists (the farm is
/// Degraded and says how to restore it); deleting the farm deletes both, behind a finalizer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_credentials_are_never_regenerated_and_go_only_with_the_farm() -> anyhow::Result<()>
{
    let Some(c) = cluster().await else {
        return Ok(());
    };
    let ns = "e2e-credentials";
    namespace(&c.admin, ns).await?;
    let op = operator_watching(&c, ns).await?;
    let farm = example("serverfarms/minimal.yaml");
    apply_farm(&c.admin, ns, &farm).await?;
    let secrets: Api<Secret> = Api::namespaced(c.admin.clone(), ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.admin.clone(), ns);
    let farms: Api<ServerFarm> = Api::namespaced(c.admin.clone(), ns);
    // The StatefulSet controller makes the database's claim (no node binds it here).
    eventually(
        WAIT,
        "the credentials and the database's claim exist",
        || async {
            Ok(secrets.get_opt("shop-db").await?.is_some()
                && claims.get_opt("data-shop-db-0").await?.is_some())
        },
    )
    .await?;
    let original = secrets.get("shop-db").await?;
    assert_eq!(original.metadata.owner_references, None, "not collectable");
    let claim = claims.get("data-shop-db-0").await?;
    assert!(
        claim
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty(),
        "the claim is retained: nobody owns it"
    );
    assert_eq!(
        farms.get("shop").await?.finalizers(),
        ["stickyfarm.dev/database"]
    );

    // The Secret deleted while the database exists (as the garbage collector did to owned
    // credentials): no new password, a Degraded farm and a Warning that says what to do.
    secrets.delete("shop-db", &DeleteParams::default()).await?;
    eventually(
        WAIT,
        "the farm is Degraded: credentials missing",
        || async {
            let status = farm_status(&c.admin, ns, "shop").await?;
            Ok(condition(&status, "Degraded").is_some_and(|d| {
                d["status"] == "True" && d["reason"] == "DatabaseCredentialsMissing"
            }))
        },
    )
    .await?;
    // Another reconcile (a change to the farm) still makes no password.
    let mut touched = farm.clone();
    touched["spec"]["replicas"] = json!(2);
    apply_farm(&c.admin, ns, &touched).await?;
    let sts: Api<StatefulSet> = Api::namespaced(c.admin.clone(), ns);
    eventually(WAIT, "the farm is still reconciled: 2 units", || async {
        Ok(sts.get("shop").await?.spec.replicas == Some(2))
    })
    .await?;
    assert!(
        secrets.get_opt("shop-db").await?.is_none(),
        "never regenerated"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.admin.clone(), ns);
    let warning = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("DatabaseCredentialsMissing"))
        .expect("a Warning Event");
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(
        warning
            .note
            .as_deref()
            .is_some_and(|n| n.contains("Restore the Secret")),
        "{warning:?}"
    );

    // Restored from a backup: the farm recovers with the password the database has.
    let mut restored = original.clone();
    restored.metadata = kube::api::ObjectMeta {
        name: Some("shop-db".into()),
        labels: original.metadata.labels.clone(),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &restored).await?;
    eventually(WAIT, "the farm is no longer Degraded", || async {
        let status = farm_status(&c.admin, ns, "shop").await?;
        Ok(condition(&status, "Degraded").is_some_and(|d| d["status"] == "False"))
    })
    .await?;
    assert_eq!(secrets.get("shop-db").await?.data, original.data);

    // Nothing the operator logged, down to its Kubernetes client's trace, holds a credential of
    // the farm: the passwords it generated, the database URL, the tokens, the session-id key.
    let log = captured_operator_log();
    assert!(
        log.lines()
            .any(|l| l.contains("\"target\":\"stickyfarm_operator") && l.contains(ns)),
        "the operator's events in this namespace are captured"
    );
    let mut checked = 0;
    for secret in secrets.list(&ListParams::default()).await?.items {
        for (key, value) in secret.data.clone().unwrap_or_default() {
            if CREDENTIAL_KEYS.contains(&key.as_str()) {
                let value = String::from_utf8_lossy(&value.0).into_owned();
                assert!(
                    !log.contains(&value),
                    "the operator logged {key} of the Secret {}",
                    secret.name_any()
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 5,
        "the farm's credentials were all looked for ({checked})"
    );

    // Deleting the farm takes the credentials and the claim too, then the farm goes.
    farms.delete("shop", &DeleteParams::default()).await?;
    eventually(
        WAIT,
        "the farm, its credentials and its claim are gone",
        || async {
            Ok(farms.get_opt("shop").await?.is_none()
                && secrets.get_opt("shop-db").await?.is_none()
                && claims.get_opt("data-shop-db-0").await?.is_none())
        },
    )
    .await?;
    op.stop().await?;
    Ok(())
}

/// Server-side apply (with force) would take over any object with the farm's names; the operator
/// first checks the owner: a Service someone made with a unit's name stays exactly as it was,
/// the rest of the farm is applied, and the farm is `Degraded` with reason `NameConflict`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_object_with_a_farms_name_is_never_taken_over() -> anyhow::Result<()> {
    let Some(c) = cluster().await else {
        return Ok(());
    };
    let ns = "e2e-conflict";
    namespace(&c.admin, ns).await?;
    let services: Api<Service> = Api::namespaced(c.admin.clone(), ns);
    let theirs = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "shop-1", "labels": {"team": "payments"}},
                "spec": {"selector": {"app": "payments"}, "ports": [{"port": 443}]},
            }))?,
        )
        .await?;
    let op = Operator::start(
        &c.kubeconfig,
        &["--watch-namespace", ns, "--leader-elect", "false"],
    )
    .await?;
    let mut farm = example("serverfarms/minimal.yaml");
    farm["metadata"]["name"] = json!("shop");
    apply_farm(&c.admin, ns, &farm).await?;
    eventually(WAIT, "the farm reports the conflict", || async {
        let status = farm_status(&c.admin, ns, "shop").await?;
        Ok(condition(&status, "Degraded").is_some_and(|d| {
            d["status"] == "True"
                && d["reason"] == "NameConflict"
                && d["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(&format!("Service {ns}/shop-1")))
        }))
    })
    .await?;
    let sts: Api<StatefulSet> = Api::namespaced(c.admin.clone(), ns);
    assert!(
        sts.get_opt("shop").await?.is_some(),
        "the rest of the farm runs"
    );
    let after = services.get("shop-1").await?;
    assert_eq!(
        after.metadata.resource_version, theirs.metadata.resource_version,
        "never written"
    );
    assert!(after.metadata.owner_references.is_none());
    assert_eq!(after.spec, theirs.spec);
    assert_eq!(after.metadata.labels, theirs.metadata.labels);
    // Deleted while the operator runs, so its finalizer is released and the namespace can go.
    let farms: Api<ServerFarm> = Api::namespaced(c.admin.clone(), ns);
    farms.delete("shop", &DeleteParams::default()).await?;
    eventually(WAIT, "the farm is gone", || async {
        Ok(farms.get_opt("shop").await?.is_none())
    })
    .await?;
    assert!(
        services.get_opt("shop-1").await?.is_some(),
        "their Service outlives the farm"
    );
    op.stop().await?;
    Ok(())
}

/// Installed for one namespace (`watchNamespace`), the operator's rights stop at it, Secrets
/// included: its ServiceAccount reads a Secret there and is refused one in another namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_operator_cannot_touch_secrets_elsewhere() -> anyhow::Result<()> {
    let Some(c) = cluster().await else {
        return Ok(());
    };
    secret_rights_stop_at(
        &c,
        ("scoped", "e2e-scoped-system"),
        "watchNamespace=e2e-scoped",
        "e2e-scoped",
        "e2e-next-door",
    )
    .await
}

/// Installed for all namespaces but with `farmNamespaces`, the operator holds Secret rights
/// only in the listed ones: its ServiceAccount reads a Secret there and is refused one
/// elsewhere (and it refuses farms elsewhere, `controller.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_for_listed_farm_namespaces_cannot_touch_secrets_elsewhere()
-> anyhow::Result<()> {
    let Some(c) = cluster().await else {
        return Ok(());
    };
    secret_rights_stop_at(
        &c,
        ("listed", "e2e-listed-system"),
        "farmNamespaces={e2e-listed}",
        "e2e-listed",
        "e2e-unlisted",
    )
    .await
}

/// Installs a second release (`release` in `release_ns`, with `set`), then, as its
/// ServiceAccount, reads a Secret in `allowed` and is refused reading or creating one in
/// `elsewhere`. Uninstalls the release whatever the outcome.
async fn secret_rights_stop_at(
    c: &Cluster,
    (release, release_ns): (&str, &str),
    set: &str,
    allowed: &str,
    elsewhere: &str,
) -> anyhow::Result<()> {
    for ns in [allowed, elsewhere] {
        namespace(&c.admin, ns).await?;
        let secrets: Api<Secret> = Api::namespaced(c.admin.clone(), ns);
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shop-db"},
                    "stringData": {"password": "not-yours"},
                }))?,
            )
            .await?;
    }
    // The CRD belongs to the suite's main release.
    install_release(
        &c.kubeconfig,
        release,
        release_ns,
        &[set, "crds.enabled=false"],
    )?;
    let operator = impersonate(&c.kubeconfig, release_ns, &format!("{release}-stickyfarm")).await?;
    let forbidden = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 403);
    let outcome = async {
        let here: Api<Secret> = Api::namespaced(operator.clone(), allowed);
        eventually(WAIT, &format!("the Role in {allowed} applies"), || async {
            Ok(here.get_opt("shop-db").await.is_ok_and(|s| s.is_some()))
        })
        .await?;
        let there: Api<Secret> = Api::namespaced(operator.clone(), elsewhere);
        let read = there
            .get("shop-db")
            .await
            .expect_err(&format!("reading in {elsewhere}"));
        assert!(forbidden(&read), "{read}");
        let write = there
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "planted"},
                }))?,
            )
            .await
            .expect_err(&format!("creating in {elsewhere}"));
        assert!(forbidden(&write), "{write}");
        anyhow::Ok(())
    }
    .await;
    uninstall_release(&c.kubeconfig, release, release_ns)?;
    outcome
}

/// A farm switched from its managed database to an external one loses the managed database's
/// StatefulSet, Service and NetworkPolicy; its volume claim and credentials go or stay as its
/// `deletePolicy` says. With `Retain`, switching back finds the same claim and the same
/// password (PostgreSQL keeps the one it was initialised with).
/// `spec.gateway.tls` on the real API server: the operator (as the chart's ServiceAccount)
/// mounts the `kubernetes.io/tls` Secret whole into the gateway, points the gateway at its
/// files, opens the redirect port on the Service and the NetworkPolicy; turning TLS off takes
/// all of it away again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_mounts_the_tls_secret_into_the_gateway() -> anyhow::Result<()> {
    let Some(c) = cluster().await else {
        return Ok(());
    };
    let ns = "e2e-gateway-tls";
    namespace(&c.admin, ns).await?;
    let _op = operator_watching(&c, ns).await?;
    let ca = stickyfarm_testkit::TestCa::new(&["shop.example"]);
    let secrets: Api<Secret> = Api::namespaced(c.admin.clone(), ns);
    let tls_secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "shop-tls"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": ca.server_cert_pem, "tls.key": ca.server_key_pem}
    }))?;
    secrets
        .patch(
            "shop-tls",
            &PatchParams::apply("kubectl-e2e").force(),
            &Patch::Apply(&tls_secret),
        )
        .await?;
    let farm = |gateway: Value| {
        json!({
            "apiVersion": "stickyfarm.dev/v1alpha1",
            "kind": "ServerFarm",
            "metadata": {"name": "shop"},
            "spec": {"app": {"image": "registry.example/shop:1"}, "gateway": gateway}
        })
    };
    let deployments: Api<Deployment> = Api::namespaced(c.admin.clone(), ns);
    let services: Api<Service> = Api::namespaced(c.admin.clone(), ns);
    let policies: Api<NetworkPolicy> = Api::namespaced(c.admin.clone(), ns);
    let env_of = |d: &Deployment| -> BTreeMap<String, String> {
        d.spec.template.spec.as_ref().unwrap().containers[0]
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| Some((e.name, e.value?)))
            .collect()
    };
    apply_farm(
        &c.admin,
        ns,
        &farm(json!({"port": 443, "tls": {"secretName": "shop-tls", "redirectHttp": true}})),
    )
    .await?;
    // The operator applies the gateway's Deployment, Service and NetworkPolicy one after
    // another: wait for all three before reading them.
    eventually(WAIT, "the gateway mounts the TLS Secret", || async {
        Ok(deployments.get_opt("shop-gateway").await?.is_some_and(|d| {
            env_of(&d).get("STICKYFARM_TLS_CERT").map(String::as_str)
                == Some("/etc/stickyfarm/tls/tls.crt")
        }) && services.get_opt("shop-gateway").await?.is_some()
            && policies.get_opt("shop-gateway").await?.is_some())
    })
    .await?;
    let d = deployments.get("shop-gateway").await?;
    let env = env_of(&d);
    assert_eq!(env["STICKYFARM_TLS_KEY"], "/etc/stickyfarm/tls/tls.key");
    assert_eq!(
        env["STICKYFARM_TLS_ORIGIN"],
        format!("Secret {ns}/shop-tls")
    );
    assert_eq!(env["STICKYFARM_REDIRECT_PORT"], "443");
    let pod = d.spec.template.spec.unwrap();
    let volume = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "tls")
        .context("the tls volume")?;
    let secret = volume.secret.context("a Secret volume")?;
    assert_eq!(secret.secret_name.as_deref(), Some("shop-tls"));
    assert_eq!(secret.default_mode, Some(0o400));
    let mount = pod.containers[0]
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .find(|m| m.name == "tls")
        .context("the tls mount")?;
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only, mount.sub_path),
        ("/etc/stickyfarm/tls", Some(true), None)
    );
    let ports: BTreeMap<String, i32> = services
        .get("shop-gateway")
        .await?
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap_or_default(), p.port))
        .collect();
    assert_eq!(
        ports,
        BTreeMap::from([("https".to_owned(), 443), ("http".to_owned(), 80)])
    );
    let open_ports = |p: NetworkPolicy| -> Vec<String> {
        p.spec
            .unwrap()
            .ingress
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.from.is_none())
            .flat_map(|r| r.ports.unwrap_or_default())
            .filter_map(|p| p.port)
            .map(|p| format!("{p:?}"))
            .collect()
    };
    assert_eq!(
        open_ports(policies.get("shop-gateway").await?),
        ["Int(8000)", "Int(8001)"]
    );

    // TLS off: the mount, the files and the redirect go.
    apply_farm(&c.admin, ns, &farm(json!({"port": 8080}))).await?;
    eventually(WAIT, "the gateway no longer mounts the Secret", || async {
        Ok(deployments
            .get_opt("shop-gateway")
            .await?
            .is_some_and(|d| !env_of(&d).contains_key("STICKYFARM_TLS_CERT")))
    })
    .await?;
    let pod = deployments
        .get("shop-gateway")
        .await?
        .spec
        .template
        .spec
        .unwrap();
    assert!(pod.volumes.unwrap().iter().all(|v| v.name != "tls"));
    eventually(WAIT, "the Service drops the redirect port", || async {
        Ok(services
            .get("shop-gateway")
            .await?
            .spec
            .and_then(|s| s.ports)
            .is_some_and(|p| p.len() == 1 && p[0].name.as_deref() == Some("http")))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_to_an_external_database_prunes_the_managed_one_by_its_delete_policy()
-> anyhow::Result<()> {
    let Some(c) = cluster().await else {
        return Ok(());
    };
    let ns = "e2e-database-switch";
    namespace(&c.admin, ns).await?;
    let op = operator_watching(&c, ns).await?;
    let secrets: Api<Secret> = Api::namespaced(c.admin.clone(), ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.admin.clone(), ns);
    let statefulsets: Api<StatefulSet> = Api::namespaced(c.admin.clone(), ns);
    let services: Api<Service> = Api::namespaced(c.admin.clone(), ns);
    let policies: Api<NetworkPolicy> = Api::namespaced(c.admin.clone(), ns);
    let external_secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "pg"},
        "stringData": {"url": "postgres://shop:secret@pg.example:5432/shop"}
    }))?;
    secrets
        .create(&PostParams::default(), &external_secret)
        .await?;

    for (name, policy) in [("keep", "Retain"), ("drop", "Delete")] {
        let farm = |database: Value| {
            json!({
                "apiVersion": "stickyfarm.dev/v1alpha1",
                "kind": "ServerFarm",
                "metadata": {"name": name},
                "spec": {"app": {"image": "registry.example/shop:1"}, "database": database}
            })
        };
        let db = format!("{name}-db");
        let claim = format!("data-{db}-0");
        let credentials = [db.clone(), format!("{db}-app"), format!("{db}-superuser")];
        apply_farm(
            &c.admin,
            ns,
            &farm(json!({"managed": {"deletePolicy": policy}})),
        )
        .await?;
        eventually(
            WAIT,
            "the managed database, its claim and credentials exist",
            || async {
                let mut all = statefulsets.get_opt(&db).await?.is_some()
                    && services.get_opt(&db).await?.is_some()
                    && policies.get_opt(&db).await?.is_some()
                    && claims.get_opt(&claim).await?.is_some();
                for s in &credentials {
                    all &= secrets.get_opt(s).await?.is_some();
                }
                Ok(all)
            },
        )
        .await?;
        let claim_uid = claims.get(&claim).await?.uid();
        let secret_uid = secrets.get(&db).await?.uid();

        apply_farm(
            &c.admin,
            ns,
            &farm(json!({"external": {"secretName": "pg", "key": "url"}})),
        )
        .await?;
        eventually(WAIT, "the managed database's objects are gone", || async {
            Ok(statefulsets.get_opt(&db).await?.is_none()
                && services.get_opt(&db).await?.is_none()
                && policies.get_opt(&db).await?.is_none())
        })
        .await?;
        // The units now read the external Secret.
        let units = statefulsets.get(name).await?;
        let sidecar = units.spec.template.spec.unwrap().containers;
        let url = sidecar
            .iter()
            .find(|c| c.name == "stickyfarm-sidecar")
            .and_then(|c| c.env.iter().flatten().find(|e| e.name == "DATABASE_URL"))
            .and_then(|e| e.value_from.clone())
            .and_then(|v| v.secret_key_ref)
            .expect("DATABASE_URL from a Secret");
        assert_eq!((url.name.as_str(), url.key.as_str()), ("pg", "url"));

        match policy {
            "Delete" => {
                eventually(
                    WAIT,
                    "the claim and the credentials are deleted",
                    || async {
                        let mut none = claims.get_opt(&claim).await?.is_none();
                        for s in &credentials {
                            none &= secrets.get_opt(s).await?.is_none();
                        }
                        Ok(none)
                    },
                )
                .await?;
                assert!(
                    secrets.get_opt("pg").await?.is_some(),
                    "the external Secret is the user's"
                );
            }
            _ => {
                // Given the operator a few reconciles (resync 5 s) to do what it must not.
                tokio::time::sleep(Duration::from_secs(12)).await;
                assert_eq!(
                    claims.get(&claim).await?.uid(),
                    claim_uid,
                    "the claim is kept"
                );
                for s in &credentials {
                    assert!(secrets.get_opt(s).await?.is_some(), "{s} is kept");
                }
            }
        }
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.admin.clone(), ns);
        let removed = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("DatabaseRemoved")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
            .expect("a DatabaseRemoved Event");
        assert!(
            removed
                .note
                .as_deref()
                .is_some_and(|n| n.contains(&format!("deletePolicy {policy}"))),
            "{removed:?}"
        );

        if policy == "Retain" {
            // Back to a managed database: the same claim, the same password.
            apply_farm(
                &c.admin,
                ns,
                &farm(json!({"managed": {"deletePolicy": policy}})),
            )
            .await?;
            eventually(WAIT, "the managed database is back", || async {
                Ok(statefulsets.get_opt(&db).await?.is_some())
            })
            .await?;
            assert_eq!(claims.get(&claim).await?.uid(), claim_uid);
            assert_eq!(
                secrets.get(&db).await?.uid(),
                secret_uid,
                "never regenerated"
            );
        }
    }
    // The farms go while the operator runs (their finalizer is its to remove).
    let farms: Api<ServerFarm> = Api::namespaced(c.admin.clone(), ns);
    for name in ["keep", "drop"] {
        farms.delete(name, &DeleteParams::default()).await?;
    }
    eventually(WAIT, "both farms are gone", || async {
        Ok(farms.list(&ListParams::default()).await?.items.is_empty())
    })
    .await?;
    op.stop().await?;
    Ok(())
}
