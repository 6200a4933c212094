//! The reconciler against a mocked API server: kube's real client over a tower mock, answered
//! by a small in-memory object store (the way kube-rs's controller-rs tests its reconciler).
//! Each scenario asserts what ended up in the store, which requests were made, and the Action.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::Client;
use kube::client::Body;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};
use stickyfarm_api::farm::{ServerFarm, ServiceType};
use stickyfarm_operator::build::{Images, Scrapers};
use stickyfarm_operator::credentials;
use stickyfarm_operator::metrics::Metrics;
use stickyfarm_operator::reconcile::{self, Context, Settings};

const UID: &str = "6a0f9c1e-2b7d-4e0a-9f1c-3d5e7a9b1c2d";
const FARM_PATH: &str = "/apis/stickyfarm.dev/v1alpha1/namespaces/prod/serverfarms/shop";
const STS_PATH: &str = "/apis/apps/v1/namespaces/prod/statefulsets/shop";
const SECRET_PATH: &str = "/api/v1/namespaces/prod/secrets/shop-db";
const DRAIN: Duration = Duration::from_secs(30);

/// One request the fake saw.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: String,
    body: Value,
}

/// An in-memory API server: objects by path, a request log, and paths that fail.
#[derive(Default)]
struct Store {
    objects: BTreeMap<String, Value>,
    log: Vec<Seen>,
    failing: Vec<String>,
}

#[derive(Clone, Default)]
struct FakeApi(Arc<Mutex<Store>>);

impl FakeApi {
    fn client(&self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let me = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                send.send_response(me.answer(request).await);
            }
        });
        Client::new(service, "prod")
    }

    fn put(&self, path: &str, object: Value) {
        self.0.lock().unwrap().objects.insert(path.into(), object);
    }

    fn delete(&self, path: &str) {
        self.0.lock().unwrap().objects.remove(path);
    }

    fn get(&self, path: &str) -> Option<Value> {
        self.0.lock().unwrap().objects.get(path).cloned()
    }

    fn paths(&self) -> Vec<String> {
        self.0.lock().unwrap().objects.keys().cloned().collect()
    }

    fn log(&self) -> Vec<Seen> {
        self.0.lock().unwrap().log.clone()
    }

    fn writes(&self) -> Vec<Seen> {
        self.log()
            .into_iter()
            .filter(|s| s.method != Method::GET)
            .collect()
    }

    fn event_reasons(&self) -> Vec<String> {
        self.log()
            .iter()
            .filter(|s| s.path.contains("/events") && s.method == Method::POST)
            .map(|s| s.body["reason"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn fail(&self, path: &str) {
        self.0.lock().unwrap().failing.push(path.into());
    }

    async fn answer(&self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or_default().to_owned();
        let mut store = self.0.lock().unwrap();
        store.log.push(Seen {
            method: parts.method.clone(),
            path: path.clone(),
            query: query.clone(),
            body: body.clone(),
        });
        if store.failing.contains(&path) {
            return status(StatusCode::INTERNAL_SERVER_ERROR, "etcd is unavailable");
        }
        match parts.method {
            Method::GET if store.objects.contains_key(&path) => ok(&store.objects[&path]),
            Method::GET if is_collection(&path) => {
                let selector = query_param(&query, "labelSelector");
                let items: Vec<Value> = store
                    .objects
                    .iter()
                    .filter(|(p, _)| p.rsplit_once('/').is_some_and(|(dir, _)| dir == path))
                    .filter(|(_, o)| matches(o, selector.as_deref()))
                    .map(|(_, o)| o.clone())
                    .collect();
                ok(
                    &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            Method::GET => status(StatusCode::NOT_FOUND, "not found"),
            Method::POST => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("generated-{}", store.log.len()));
                let at = format!("{path}/{name}");
                if store.objects.contains_key(&at) {
                    return status(StatusCode::CONFLICT, "already exists");
                }
                let stored = with_string_data_encoded(body);
                store.objects.insert(at, stored.clone());
                respond(StatusCode::CREATED, &stored)
            }
            Method::PATCH if path.ends_with("/status") => {
                let at = path.trim_end_matches("/status").to_owned();
                let Some(obj) = store.objects.get_mut(&at) else {
                    return status(StatusCode::NOT_FOUND, "not found");
                };
                obj["status"] = body["status"].clone();
                ok(obj)
            }
            Method::PATCH if content_type(&parts.headers) == "application/json-patch+json" => {
                let Some(obj) = store.objects.get_mut(&path) else {
                    return status(StatusCode::NOT_FOUND, "not found");
                };
                // The API server's JSON patch (evanphx/json-patch) passes a test for null at a
                // missing path, as kube-runtime's finalizer helper relies on; json-patch fails it.
                let ops: Vec<Value> = body
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|op| {
                        let pointer = op["path"].as_str().unwrap_or_default();
                        !(op["op"] == "test"
                            && op["value"].is_null()
                            && obj.pointer(pointer).is_none())
                    })
                    .cloned()
                    .collect();
                let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
                // All or nothing, as the API server applies it.
                let mut patched = obj.clone();
                if let Err(e) = json_patch::patch(&mut patched, &patch) {
                    return status(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string());
                }
                *obj = patched;
                ok(obj)
            }
            Method::PATCH if content_type(&parts.headers) == "application/merge-patch+json" => {
                let Some(obj) = store.objects.get_mut(&path) else {
                    return status(StatusCode::NOT_FOUND, "not found");
                };
                // The resourceVersion in a merge patch is a precondition.
                let expected = &body["metadata"]["resourceVersion"];
                let stored = &obj["metadata"]["resourceVersion"];
                if !expected.is_null() && !stored.is_null() && expected != stored {
                    return status(StatusCode::CONFLICT, "the object has been modified");
                }
                merge(obj, &body);
                ok(obj)
            }
            Method::PATCH => {
                assert!(
                    query.contains("fieldManager=stickyfarm-operator"),
                    "apply without our field manager: {path}?{query}"
                );
                assert!(
                    query.contains("force=true"),
                    "controllers apply with force: {path}?{query}"
                );
                // Server-side apply, simplified: the applied object replaces ours, status stays.
                let kept_status = store
                    .objects
                    .get(&path)
                    .and_then(|o| o.get("status").cloned());
                let mut obj = body.clone();
                if let Some(s) = kept_status {
                    obj["status"] = s;
                }
                store.objects.insert(path, obj.clone());
                ok(&obj)
            }
            Method::DELETE => match store.objects.remove(&path) {
                Some(_) => ok(&json!({"apiVersion": "v1", "kind": "Status", "status": "Success"})),
                None => status(StatusCode::NOT_FOUND, "not found"),
            },
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "unexpected"),
        }
    }
}

fn content_type(headers: &http::HeaderMap) -> &str {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// RFC 7386 JSON merge patch: objects merge, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let object = target.as_object_mut().expect("an object");
    for (key, value) in fields {
        if value.is_null() {
            object.remove(key);
        } else {
            merge(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn is_collection(path: &str) -> bool {
    // /api/v1/namespaces/<ns>/<plural> or /apis/<g>/<v>/namespaces/<ns>/<plural>
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(
        (parts.first(), parts.len()),
        (Some(&"api"), 5) | (Some(&"apis"), 6)
    )
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            v.replace("%3D", "=")
                .replace("%2C", ",")
                .replace("%2F", "/")
        })
    })
}

fn matches(object: &Value, selector: Option<&str>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let labels = &object["metadata"]["labels"];
    selector.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => labels[k].as_str() == Some(v),
        None => labels.get(term).is_some(),
    })
}

fn ok(v: &Value) -> Response<Body> {
    respond(StatusCode::OK, v)
}

fn respond(code: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

fn status(code: StatusCode, message: &str) -> Response<Body> {
    // The reason is what clients match on (`get_opt` maps NotFound to None).
    let reason = match code {
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::CONFLICT => "AlreadyExists",
        StatusCode::UNPROCESSABLE_ENTITY => "Invalid",
        _ => "InternalError",
    };
    respond(
        code,
        &json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

/// A Secret's `stringData` merged into `data` (base64), as the API server stores it: no reader
/// ever sees `stringData`.
fn with_string_data_encoded(mut body: Value) -> Value {
    use base64::Engine as _;
    if let Some(Value::Object(plain)) = body.as_object_mut().and_then(|o| o.remove("stringData")) {
        let data = body["data"].as_object().cloned().unwrap_or_default();
        let mut data = data;
        for (k, v) in plain {
            let text = v.as_str().unwrap_or_default();
            data.insert(
                k,
                json!(base64::engine::general_purpose::STANDARD.encode(text)),
            );
        }
        body["data"] = Value::Object(data);
    }
    body
}

/// One key of a stored Secret, decoded.
fn secret_value(secret: &Value, key: &str) -> String {
    use base64::Engine as _;
    let encoded = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no key {key}"));
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap(),
    )
    .unwrap()
}

fn farm_json(replicas: u32) -> Value {
    json!({
        "apiVersion": "stickyfarm.dev/v1alpha1",
        "kind": "ServerFarm",
        "metadata": {"name": "shop", "namespace": "prod", "uid": UID, "generation": 1},
        "spec": {"replicas": replicas, "app": {"image": "registry.example/shop:1"}},
    })
}

fn settings() -> Settings {
    Settings {
        images: Images {
            sidecar: "ghcr.io/stickyfarm/sidecar:0.1.0".into(),
            gateway: "ghcr.io/stickyfarm/gateway:0.1.0".into(),
            postgres: "postgres:17".into(),
            pull_secrets: Vec::new(),
        },
        drain_period: DRAIN,
        resync: Duration::from_secs(300),
        scrapers: Scrapers::in_namespaces(["stickyfarm-system"]),
        trace_collector: None,
        allowed_service_types: vec![ServiceType::ClusterIP],
        farm_namespaces: Vec::new(),
    }
}

fn context(client: Client) -> Arc<Context> {
    context_with(client, settings())
}

fn context_with(client: Client, settings: Settings) -> Arc<Context> {
    let recorder = Recorder::new(client.clone(), Reporter::from("stickyfarm-operator"));
    Arc::new(Context::new(
        client,
        settings,
        recorder,
        Arc::new(Metrics::default()),
    ))
}

/// Reconciles the farm as stored, the way the controller hands it over.
async fn reconcile_stored(api: &FakeApi, ctx: &Arc<Context>) -> Result<Action, reconcile::Error> {
    let farm: ServerFarm =
        serde_json::from_value(api.get(FARM_PATH).expect("farm stored")).unwrap();
    reconcile::reconcile(Arc::new(DeserializeGuard(Ok(farm))), ctx.clone()).await
}

fn unit_service_path(i: u32) -> String {
    format!("/api/v1/namespaces/prod/services/shop-{i}")
}

fn condition(farm: &Value, t: &str) -> Value {
    farm["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == t)
        .cloned()
        .unwrap_or_else(|| panic!("no {t} condition"))
}

#[tokio::test]
async fn create_applies_every_object_once_and_generates_credentials() {
    let api = FakeApi::default();
    api.put(FARM_PATH, farm_json(3));
    let ctx = context(api.client());

    let action = reconcile_stored(&api, &ctx).await.expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));

    let mut want = vec![
        "/api/v1/namespaces/prod/secrets/shop-db",
        "/api/v1/namespaces/prod/secrets/shop-db-app",
        "/api/v1/namespaces/prod/secrets/shop-db-superuser",
        "/api/v1/namespaces/prod/secrets/shop-gateway-tokens",
        "/api/v1/namespaces/prod/secrets/shop-session-id-key",
        "/api/v1/namespaces/prod/serviceaccounts/shop-gateway",
        "/api/v1/namespaces/prod/services/shop-0",
        "/api/v1/namespaces/prod/services/shop-1",
        "/api/v1/namespaces/prod/services/shop-2",
        "/api/v1/namespaces/prod/services/shop-db",
        "/api/v1/namespaces/prod/services/shop-gateway",
        "/api/v1/namespaces/prod/services/shop-units",
        "/apis/apps/v1/namespaces/prod/deployments/shop-gateway",
        "/apis/apps/v1/namespaces/prod/statefulsets/shop",
        "/apis/apps/v1/namespaces/prod/statefulsets/shop-db",
        "/apis/networking.k8s.io/v1/namespaces/prod/networkpolicies/shop-db",
        "/apis/networking.k8s.io/v1/namespaces/prod/networkpolicies/shop-gateway",
        "/apis/networking.k8s.io/v1/namespaces/prod/networkpolicies/shop-units",
        "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/shop-units",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/prod/rolebindings/shop-gateway",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/prod/roles/shop-gateway",
        FARM_PATH,
    ];
    want.sort();
    let got: Vec<String> = api
        .paths()
        .into_iter()
        .filter(|p| !p.contains("/events/"))
        .collect();
    assert_eq!(got, want);

    let secret = api.get(SECRET_PATH).unwrap();
    let url = secret_value(&secret, "url");
    let password = secret_value(&secret, "password");
    assert_eq!(password.len(), 64, "32 random bytes as hex");
    assert_eq!(
        url,
        format!("postgres://stickyfarm:{password}@shop-db.prod.svc:5432/stickyfarm")
    );
    assert!(
        api.event_reasons()
            .contains(&"CredentialsCreated".to_owned())
    );
    // The credentials are out of the garbage collector's reach; the finalizer (set before the
    // Secret was made) lets the operator delete them with the farm.
    assert_eq!(secret["metadata"]["ownerReferences"], Value::Null);
    assert_eq!(
        api.get(FARM_PATH).unwrap()["metadata"]["finalizers"],
        json!(["stickyfarm.dev/database"])
    );
    let finalizer_write = api
        .writes()
        .iter()
        .position(|s| s.path == FARM_PATH)
        .expect("the finalizer was added");
    let secret_write = api
        .writes()
        .iter()
        .position(|s| s.path.ends_with("/secrets"))
        .expect("the Secret was created");
    assert!(finalizer_write < secret_write, "finalizer first");

    // Every write of an owned object was a server-side apply (the fake checks the field
    // manager and force on each); the Secret is the only create.
    let creates: Vec<String> = api
        .writes()
        .into_iter()
        .filter(|s| s.method == Method::POST && !s.path.contains("/events"))
        .map(|s| s.path)
        .collect();
    assert_eq!(
        creates, ["/api/v1/namespaces/prod/secrets"; 5],
        "the database roles' credentials (3), the gateway tokens and the session-id key are the only creates"
    );

    let sts = api.get(STS_PATH).unwrap();
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(sts["metadata"]["ownerReferences"][0]["uid"], UID);

    let farm = api.get(FARM_PATH).unwrap();
    assert_eq!(farm["status"]["observedGeneration"], 1);
    assert_eq!(farm["status"]["unitsReady"], "0/3");
    assert_eq!(condition(&farm, "Ready")["status"], "False");
    assert_eq!(condition(&farm, "Progressing")["reason"], "UnitsStarting");
    assert_eq!(condition(&farm, "Degraded")["status"], "False");
    let status_patch = api
        .log()
        .into_iter()
        .find(|s| s.path.ends_with("/status"))
        .expect("status written");
    assert!(
        status_patch
            .query
            .contains("fieldManager=stickyfarm-operator")
    );
}

#[tokio::test]
async fn update_reapplies_the_change_and_never_overwrites_the_secret() {
    let api = FakeApi::default();
    api.put(FARM_PATH, farm_json(3));
    let ctx = context(api.client());
    reconcile_stored(&api, &ctx).await.unwrap();
    let secret_before = api.get(SECRET_PATH).unwrap();

    let mut farm = farm_json(3);
    farm["metadata"]["generation"] = json!(2);
    farm["spec"]["app"]["image"] = json!("registry.example/shop:2");
    farm["spec"]["gateway"] = json!({"policy": "round-robin"});
    farm["status"] = api.get(FARM_PATH).unwrap()["status"].clone();
    api.put(FARM_PATH, farm);
    reconcile_stored(&api, &ctx).await.unwrap();

    let sts = api.get(STS_PATH).unwrap();
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example/shop:2"
    );
    let gw = api
        .get("/apis/apps/v1/namespaces/prod/deployments/shop-gateway")
        .unwrap();
    let env = gw["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .clone();
    assert!(env.contains(&json!({"name": "STICKYFARM_POLICY", "value": "round-robin"})));
    assert_eq!(
        api.get(SECRET_PATH).unwrap(),
        secret_before,
        "the Secret is never rewritten"
    );
    let secret_writes = api
        .writes()
        .into_iter()
        .filter(|s| s.path.contains("/secrets"))
        .count();
    assert_eq!(
        secret_writes, 5,
        "credentials, tokens and session-id key created once, never patched"
    );
    assert_eq!(
        api.get(FARM_PATH).unwrap()["status"]["observedGeneration"],
        2
    );
}

#[tokio::test]
async fn scale_down_drains_then_removes_units() {
    let api = FakeApi::default();
    api.put(FARM_PATH, farm_json(5));
    let ctx = context(api.client());
    reconcile_stored(&api, &ctx).await.unwrap();
    for i in 0..5 {
        assert!(api.get(&unit_service_path(i)).is_some());
    }

    // 5 → 2: nothing is removed yet; units 2..5 drain.
    api.put(FARM_PATH, farm_json(2));
    let action = reconcile_stored(&api, &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(DRAIN), "back when the drain ends");
    let sts = api.get(STS_PATH).unwrap();
    assert_eq!(sts["spec"]["replicas"], 5, "pods stay while draining");
    let since = sts["metadata"]["annotations"]["stickyfarm.dev/drain-since"]
        .as_str()
        .expect("drain start kept")
        .to_owned();
    for i in 0..5 {
        let svc = api.get(&unit_service_path(i)).unwrap();
        let state = svc["metadata"]["labels"]["stickyfarm.dev/unit-state"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            state,
            if i < 2 { "serving" } else { "draining" },
            "shop-{i}"
        );
    }
    assert!(api.event_reasons().contains(&"DrainingUnits".to_owned()));
    let farm = api.get(FARM_PATH).unwrap();
    assert_eq!(condition(&farm, "Progressing")["reason"], "Draining");
    assert_eq!(farm["status"]["units"][4]["state"], "Draining");

    // A second reconcile during the drain keeps its start.
    reconcile_stored(&api, &ctx).await.unwrap();
    assert_eq!(
        api.get(STS_PATH).unwrap()["metadata"]["annotations"]["stickyfarm.dev/drain-since"],
        since.as_str()
    );

    // The drain period passes (the annotation is moved back, as a later reconcile would see it).
    let mut sts = api.get(STS_PATH).unwrap();
    sts["metadata"]["annotations"]["stickyfarm.dev/drain-since"] = json!("2020-01-01T00:00:00Z");
    api.put(STS_PATH, sts);
    let action = reconcile_stored(&api, &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let sts = api.get(STS_PATH).unwrap();
    assert_eq!(sts["spec"]["replicas"], 2);
    assert!(
        sts["metadata"]
            .get("annotations")
            .is_none_or(|a| a.get("stickyfarm.dev/drain-since").is_none())
    );
    for i in 0..5 {
        assert_eq!(api.get(&unit_service_path(i)).is_some(), i < 2, "shop-{i}");
    }
    let deletes: Vec<String> = api
        .writes()
        .into_iter()
        .filter(|s| s.method == Method::DELETE)
        .map(|s| s.path)
        .collect();
    assert_eq!(
        deletes,
        [
            unit_service_path(2),
            unit_service_path(3),
            unit_service_path(4)
        ]
    );
    assert!(api.event_reasons().contains(&"UnitsRemoved".to_owned()));
}

#[tokio::test]
async fn status_follows_the_pods_and_the_gateway() {
    let api = FakeApi::default();
    api.put(FARM_PATH, farm_json(2));
    for (i, ready) in [(0, "True"), (1, "False")] {
        api.put(
            &format!("/api/v1/namespaces/prod/pods/shop-{i}"),
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("shop-{i}"), "namespace": "prod", "uid": format!("uid-{i}"),
                    "labels": {"stickyfarm.dev/farm": "shop", "stickyfarm.dev/component": "unit"}},
                "status": {"podIP": format!("10.1.0.{i}"), "conditions": [{"type": "Ready", "status": ready}]},
            }),
        );
    }
    api.put(
        "/apis/apps/v1/namespaces/prod/deployments/shop-gateway",
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "shop-gateway",
            "ownerReferences": [{"apiVersion": "stickyfarm.dev/v1alpha1", "kind": "ServerFarm", "name": "shop", "uid": UID, "controller": true}]},
            "status": {"availableReplicas": 1}}),
    );
    let ctx = context(api.client());
    reconcile_stored(&api, &ctx).await.unwrap();
    let farm = api.get(FARM_PATH).unwrap();
    let s = &farm["status"];
    assert_eq!(s["replicas"], 2);
    assert_eq!(s["readyReplicas"], 1);
    assert_eq!(s["unitsReady"], "1/2");
    assert_eq!(s["gatewayEndpoint"], "shop-gateway.prod.svc:8080");
    assert_eq!(
        s["units"][0],
        json!({"name": "shop-0", "pod": "shop-0", "instanceId": "uid-0", "ready": true, "address": "10.1.0.0:8080", "state": "Serving"})
    );
    assert_eq!(s["units"][1]["ready"], false);
    assert_eq!(condition(&farm, "Ready")["reason"], "UnitsNotReady");

    // The second pod becomes ready: the farm is Ready.
    let mut pod = api.get("/api/v1/namespaces/prod/pods/shop-1").unwrap();
    pod["status"]["conditions"][0]["status"] = json!("True");
    api.put("/api/v1/namespaces/prod/pods/shop-1", pod);
    reconcile_stored(&api, &ctx).await.unwrap();
    let farm = api.get(FARM_PATH).unwrap();
    assert_eq!(condition(&farm, "Ready")["status"], "True");
    assert_eq!(condition(&farm, "Progressing")["status"], "False");
}

#[tokio::test]
async fn a_deleted_farm_is_left_to_the_garbage_collector() {
    let api = FakeApi::default();
    let mut farm = farm_json(3);
    farm["metadata"]["deletionTimestamp"] = json!("2026-11-27T10:00:00Z");
    api.put(FARM_PATH, farm);
    let ctx = context(api.client());
    let action = reconcile_stored(&api, &ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    assert!(
        api.writes().is_empty(),
        "nothing re-created during deletion: {:?}",
        api.writes()
    );
}

fn database_object(kind: &str, name: &str, farm: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": kind,
        "metadata": {
            "name": name, "namespace": "prod", "uid": format!("uid-of-{name}"),
            "labels": {"stickyfarm.dev/farm": farm, "stickyfarm.dev/component": "database"},
        },
    })
}

const CLAIM_PATH: &str = "/api/v1/namespaces/prod/persistentvolumeclaims/data-shop-db-0";
const TOKENS_PATH: &str = "/api/v1/namespaces/prod/secrets/shop-gateway-tokens";

/// The gateway's tokens are generated once and kept; a Secret of that name someone else made is
/// never used or changed (`NameConflict`), and a deleted one is generated anew.
#[tokio::test]
async fn gateway_tokens_are_made_once_and_a_foreign_secret_is_never_taken_over() {
    let api = FakeApi::default();
    api.put(FARM_PATH, farm_json(3));
    let ctx = context(api.client());
    reconcile_stored(&api, &ctx).await.unwrap();
    let tokens = api.get(TOKENS_PATH).expect("tokens generated");
    let (admin, gateway) = (
        secret_value(&tokens, "admin-token"),
        secret_value(&tokens, "gateway-token"),
    );
    assert_eq!((admin.len(), gateway.len()), (64, 64));
    assert_ne!(admin, gateway, "two independent tokens");
    assert_eq!(tokens["metadata"]["ownerReferences"][0]["uid"], UID);
    reconcile_stored(&api, &ctx).await.unwrap();
    assert_eq!(api.get(TOKENS_PATH).unwrap(), tokens, "kept as they are");

    // Deleted: new ones (nothing depends on the old ones but running pods).
    api.delete(TOKENS_PATH);
    reconcile_stored(&api, &ctx).await.unwrap();
    let renewed = api.get(TOKENS_PATH).expect("generated again");
    assert_ne!(secret_value(&renewed, "admin-token"), admin);

    // Someone else's Secret with that name: untouched, and the farm says why it is degraded.
    let foreign = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "shop-gateway-tokens", "namespace": "prod", "uid": "someone-elses"},
        "data": {"admin-token": "b3RoZXI=", "gateway-token": "b3RoZXI="},
    });
    api.put(TOKENS_PATH, foreign.clone());
    let writes_before = api.writes().len();
    let action = reconcile_stored(&api, &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(credentials::SECRET_RECHECK));
    assert_eq!(api.get(TOKENS_PATH).unwrap(), foreign);
    assert!(
        api.writes()[writes_before..]
            .iter()
            .all(|w| !w.path.contains("/secrets")),
        "the foreign Secret is never written"
    );
    let degraded = condition(&api.get(FARM_PATH).unwrap(), "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "NameConflict");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("prod/shop-gateway-tokens"),
        "{degraded}"
    );
}

#[tokio::test]
async fn a_deleted_farm_deletes_its_database_credentials_and_claim_then_lets_go() {
    let api = FakeApi::default();
    let mut farm = farm_json(3);
    farm["metadata"]["deletionTimestamp"] = json!("2026-11-27T10:00:00Z");
    farm["metadata"]["finalizers"] = json!(["example.com/other", "stickyfarm.dev/database"]);
    farm["metadata"]["resourceVersion"] = json!("7");
    api.put(FARM_PATH, farm);
    api.put(SECRET_PATH, database_object("Secret", "shop-db", "shop"));
    for other in ["shop-db-app", "shop-db-superuser", "shop-session-id-key"] {
        api.put(
            &format!("/api/v1/namespaces/prod/secrets/{other}"),
            database_object("Secret", other, "shop"),
        );
    }
    api.put(
        CLAIM_PATH,
        database_object("PersistentVolumeClaim", "data-shop-db-0", "shop"),
    );
    let ctx = context(api.client());
    let action = reconcile_stored(&api, &ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    assert!(api.get(SECRET_PATH).is_none(), "credentials deleted");
    assert!(api.get(CLAIM_PATH).is_none(), "claim deleted");
    for other in ["shop-db-app", "shop-db-superuser", "shop-session-id-key"] {
        let path = format!("/api/v1/namespaces/prod/secrets/{other}");
        assert!(api.get(&path).is_none(), "{other} deleted");
    }
    let deletes: Vec<Seen> = api
        .writes()
        .into_iter()
        .filter(|s| s.method == Method::DELETE)
        .collect();
    assert_eq!(deletes.len(), 5);
    for d in &deletes {
        let uid = d.body["preconditions"]["uid"].as_str().unwrap_or_default();
        assert!(
            uid.starts_with("uid-of-"),
            "deleted with its UID as precondition: {d:?}"
        );
    }
    assert_eq!(
        api.get(FARM_PATH).unwrap()["metadata"]["finalizers"],
        json!(["example.com/other"]),
        "only our finalizer is released"
    );
}

#[tokio::test]
async fn a_deleted_farm_never_deletes_a_secret_that_is_not_its_database() {
    let api = FakeApi::default();
    let mut farm = farm_json(3);
    farm["metadata"]["deletionTimestamp"] = json!("2026-11-27T10:00:00Z");
    farm["metadata"]["finalizers"] = json!(["stickyfarm.dev/database"]);
    api.put(FARM_PATH, farm);
    // A Secret of the same name that someone else made (no farm labels).
    api.put(
        SECRET_PATH,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shop-db", "namespace": "prod"}}),
    );
    let ctx = context(api.client());
    reconcile_stored(&api, &ctx).await.unwrap();
    assert!(api.get(SECRET_PATH).is_some(), "not ours: kept");
    assert_eq!(
        api.get(FARM_PATH).unwrap()["metadata"]["finalizers"],
        json!([])
    );
}

#[tokio::test]
async fn lost_credentials_of_an_initialised_database_are_never_regenerated() {
    for (evidence, object) in [
        (
            CLAIM_PATH,
            database_object("PersistentVolumeClaim", "data-shop-db-0", "shop"),
        ),
        (
            "/apis/apps/v1/namespaces/prod/statefulsets/shop-db",
            // The operator made it: it carries the farm's owner reference.
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "shop-db", "namespace": "prod",
                "ownerReferences": [{"apiVersion": "stickyfarm.dev/v1alpha1", "kind": "ServerFarm", "name": "shop", "uid": UID, "controller": true}]}}),
        ),
    ] {
        let api = FakeApi::default();
        api.put(FARM_PATH, farm_json(3));
        api.put(evidence, object);
        let ctx = context(api.client());
        let action = reconcile_stored(&api, &ctx).await.unwrap();
        assert_eq!(action, Action::requeue(credentials::SECRET_RECHECK));
        assert!(
            api.get(SECRET_PATH).is_none(),
            "{evidence}: no new password"
        );
        let farm = api.get(FARM_PATH).unwrap();
        let degraded = condition(&farm, "Degraded");
        assert_eq!(degraded["status"], "True");
        assert_eq!(degraded["reason"], "DatabaseCredentialsMissing");
        let message = degraded["message"].as_str().unwrap();
        assert!(message.contains("prod/shop-db"), "{message}");
        assert!(message.contains("Restore the Secret"), "{message}");
        // Everything else is still applied: the farm keeps running.
        assert!(api.get(STS_PATH).is_some());
        assert!(
            api.get("/apis/apps/v1/namespaces/prod/deployments/shop-gateway")
                .is_some()
        );
        assert_eq!(
            api.event_reasons(),
            [
                "DatabaseCredentialsMissing",
                "TokensCreated",
                "SessionIdKeyCreated"
            ]
        );

        // One Event, not one per reconcile.
        reconcile_stored(&api, &ctx).await.unwrap();
        assert_eq!(
            api.event_reasons(),
            [
                "DatabaseCredentialsMissing",
                "TokensCreated",
                "SessionIdKeyCreated"
            ]
        );

        // The Secret restored: the farm recovers, still without a new password.
        api.put(SECRET_PATH, database_object("Secret", "shop-db", "shop"));
        let action = reconcile_stored(&api, &ctx).await.unwrap();
        assert_eq!(action, Action::requeue(Duration::from_secs(300)));
        let farm = api.get(FARM_PATH).unwrap();
        assert_eq!(condition(&farm, "Degraded")["status"], "False");
        assert_eq!(
            api.get(SECRET_PATH).unwrap(),
            database_object("Secret", "shop-db", "shop")
        );
    }
}

#[tokio::test]
async fn credentials_owned_by_the_farm_are_disowned_and_kept() {
    let api = FakeApi::default();
    api.put(FARM_PATH, farm_json(3));
    let mut secret = database_object("Secret", "shop-db", "shop");
    secret["metadata"]["resourceVersion"] = json!("41");
    secret["metadata"]["ownerReferences"] = json!([
        {"apiVersion": "stickyfarm.dev/v1alpha1", "kind": "ServerFarm", "name": "shop", "uid": UID, "controller": true},
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "keep-me", "uid": "other"},
    ]);
    secret["data"] = json!({"password": "c2VjcmV0"});
    api.put(SECRET_PATH, secret);
    let ctx = context(api.client());
    reconcile_stored(&api, &ctx).await.unwrap();
    let secret = api.get(SECRET_PATH).unwrap();
    assert_eq!(
        secret["metadata"]["ownerReferences"],
        json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "keep-me", "uid": "other"}])
    );
    assert_eq!(
        secret["data"],
        json!({"password": "c2VjcmV0"}),
        "data untouched"
    );
    assert!(
        !api.event_reasons()
            .contains(&"CredentialsCreated".to_owned())
    );
    // An earlier version's database (its Secret does not say it has separate roles) keeps its
    // one role: no new roles' Secrets, the StatefulSet keeps the environment it was made with.
    assert!(
        api.get("/api/v1/namespaces/prod/secrets/shop-db-app")
            .is_none()
    );
    assert!(
        api.get("/api/v1/namespaces/prod/secrets/shop-db-superuser")
            .is_none()
    );
    let sts = api
        .get("/apis/apps/v1/namespaces/prod/statefulsets/shop-db")
        .unwrap();
    let env = &sts["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .contains(&json!({"name": "POSTGRES_USER", "valueFrom":
            {"secretKeyRef": {"name": "shop-db", "key": "username", "optional": false}}})),
        "{env}"
    );
}

/// A database made with separate roles whose app Secret is lost: the operator does not make
/// a new app password (the database holds the first one); Degraded says what to restore.
#[tokio::test]
async fn a_lost_role_secret_of_a_separate_roles_database_is_never_regenerated() {
    let api = FakeApi::default();
    api.put(FARM_PATH, farm_json(3));
    let ctx = context(api.client());
    reconcile_stored(&api, &ctx).await.unwrap();
    let app_path = "/api/v1/namespaces/prod/secrets/shop-db-app";
    let app = api
        .get(app_path)
        .expect("the app's credentials made with the database");
    assert_eq!(secret_value(&app, "username"), "stickyfarm_app");
    api.delete(app_path);
    reconcile_stored(&api, &ctx).await.unwrap();
    assert!(api.get(app_path).is_none(), "never regenerated");
    let farm = api.get(FARM_PATH).unwrap();
    let degraded = condition(&farm, "Degraded");
    assert_eq!(degraded["reason"], "DatabaseCredentialsMissing");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("prod/shop-db-app"),
        "{degraded}"
    );
}

#[tokio::test]
async fn an_api_failure_marks_the_farm_degraded_and_backs_off() {
    let api = FakeApi::default();
    api.put(FARM_PATH, farm_json(3));
    api.fail("/apis/policy/v1/namespaces/prod/poddisruptionbudgets/shop-units");
    let ctx = context(api.client());
    let farm: ServerFarm = serde_json::from_value(api.get(FARM_PATH).unwrap()).unwrap();
    let guard = Arc::new(DeserializeGuard(Ok(farm)));
    let err = reconcile::reconcile(guard.clone(), ctx.clone())
        .await
        .expect_err("the apply fails");
    let text = err.to_string();
    assert!(
        text.contains("PodDisruptionBudget prod/shop-units"),
        "{text}"
    );
    assert!(text.contains("RBAC"), "says what to check: {text}");
    let farm = api.get(FARM_PATH).unwrap();
    let degraded = condition(&farm, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "ReconcileFailed");
    assert!(degraded["message"].as_str().unwrap().contains("shop-units"));
    assert!(api.event_reasons().contains(&"ReconcileFailed".to_owned()));
    // Retries back off: 1 s, 2 s, 4 s …
    let delays: Vec<Action> = (0..3)
        .map(|_| reconcile::error_policy(guard.clone(), &err, ctx.clone()))
        .collect();
    assert_eq!(
        delays,
        [1, 2, 4].map(|s| Action::requeue(Duration::from_secs(s)))
    );
    // Nothing after the failing step was applied.
    assert!(api.get(STS_PATH).is_none());
}

#[tokio::test]
async fn an_unparsable_farm_gets_a_warning_and_no_objects() {
    let api = FakeApi::default();
    let mut bad = farm_json(3);
    bad["spec"]["replicas"] = json!(500);
    api.put(FARM_PATH, bad.clone());
    let ctx = context(api.client());
    let guard: DeserializeGuard<ServerFarm> = serde_json::from_value(bad).unwrap();
    assert!(guard.0.is_err(), "500 replicas do not parse");
    let action = reconcile::reconcile(Arc::new(guard), ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(api.event_reasons(), ["InvalidSpec"]);
    let non_events: Vec<Seen> = api
        .writes()
        .into_iter()
        .filter(|s| !s.path.contains("/events"))
        .collect();
    assert!(non_events.is_empty(), "{non_events:?}");
}

#[tokio::test]
async fn an_external_database_without_its_secret_is_degraded_not_generated() {
    let api = FakeApi::default();
    let mut farm = farm_json(1);
    farm["spec"]["database"] = json!({"external": {"secretName": "corp-pg"}});
    api.put(FARM_PATH, farm);
    let ctx = context(api.client());
    let action = reconcile_stored(&api, &ctx).await.unwrap();
    assert_eq!(
        action,
        Action::requeue(credentials::SECRET_RECHECK),
        "Secrets are not watched: look again soon"
    );
    assert!(
        api.get("/api/v1/namespaces/prod/secrets/corp-pg").is_none(),
        "never invented"
    );
    assert!(api.get(SECRET_PATH).is_none());
    assert!(
        api.get("/apis/apps/v1/namespaces/prod/statefulsets/shop-db")
            .is_none()
    );
    let farm = api.get(FARM_PATH).unwrap();
    let degraded = condition(&farm, "Degraded");
    assert_eq!(degraded["status"], "True");
    assert!(degraded["message"].as_str().unwrap().contains("corp-pg"));

    // Once the Secret exists the farm is no longer degraded.
    api.put(
        "/api/v1/namespaces/prod/secrets/corp-pg",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "corp-pg"}, "data": {"url": "cG9zdGdyZXM6Ly8="}}),
    );
    let mut farm = api.get(FARM_PATH).unwrap();
    farm["metadata"]["generation"] = json!(1);
    api.put(FARM_PATH, farm);
    reconcile_stored(&api, &ctx).await.unwrap();
    assert_eq!(
        condition(&api.get(FARM_PATH).unwrap(), "Degraded")["status"],
        "False"
    );
}

/// Server-side apply never takes over what the farm does not own: a Service someone made with a
/// unit's name stays exactly as it is, the rest of the farm is applied, and the farm says why it
/// is degraded (one Event). Pruning deletes only the farm's own Services.
#[tokio::test]
async fn objects_the_farm_does_not_own_are_never_taken_over_or_pruned() {
    let api = FakeApi::default();
    api.put(FARM_PATH, farm_json(3));
    let theirs = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "shop-1", "namespace": "prod", "uid": "their-service",
            "labels": {"team": "payments"}},
        "spec": {"selector": {"app": "payments"}, "ports": [{"port": 443}]},
    });
    api.put(&unit_service_path(1), theirs.clone());
    // Carries the farm's labels (as if a removed unit's) but not its owner reference.
    let lookalike_path = unit_service_path(7);
    let lookalike = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "shop-7", "namespace": "prod", "uid": "lookalike",
            "labels": {"stickyfarm.dev/farm": "shop", "stickyfarm.dev/unit": "shop-7"}},
    });
    api.put(&lookalike_path, lookalike.clone());
    let ctx = context(api.client());
    let action = reconcile_stored(&api, &ctx).await.unwrap();
    assert_eq!(action, Action::requeue(credentials::SECRET_RECHECK));

    assert_eq!(api.get(&unit_service_path(1)).unwrap(), theirs, "untouched");
    assert!(
        api.writes()
            .iter()
            .all(|w| w.path != unit_service_path(1) || w.method == Method::GET),
        "never written"
    );
    assert_eq!(api.get(&lookalike_path).unwrap(), lookalike, "never pruned");
    for i in [0, 2] {
        assert!(api.get(&unit_service_path(i)).is_some(), "shop-{i} applied");
    }
    assert!(api.get(STS_PATH).is_some(), "the rest of the farm runs");
    let degraded = condition(&api.get(FARM_PATH).unwrap(), "Degraded");
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "NameConflict");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("Service prod/shop-1"),
        "{degraded}"
    );
    reconcile_stored(&api, &ctx).await.unwrap();
    let conflicts = api
        .event_reasons()
        .iter()
        .filter(|r| *r == "NameConflict")
        .count();
    assert_eq!(conflicts, 1, "one Event, not one per reconcile");

    // Moved out of the way: the farm takes the name and recovers.
    api.delete(&unit_service_path(1));
    reconcile_stored(&api, &ctx).await.unwrap();
    assert!(
        api.get(&unit_service_path(1)).unwrap()["metadata"]["ownerReferences"][0]["uid"] == UID
    );
    assert_eq!(
        condition(&api.get(FARM_PATH).unwrap(), "Degraded")["status"],
        "False"
    );
}

/// A gateway Service type the installation does not allow is refused before anything is
/// applied: NodePort and LoadBalancer expose a farm outside the cluster.
#[tokio::test]
async fn service_types_beyond_the_allowed_ones_are_refused() {
    let api = FakeApi::default();
    let mut farm = farm_json(3);
    farm["spec"]["gateway"] = json!({"serviceType": "LoadBalancer"});
    api.put(FARM_PATH, farm);
    let ctx = context(api.client());
    let action = reconcile_stored(&api, &ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    assert!(api.get(STS_PATH).is_none(), "nothing applied");
    let degraded = condition(&api.get(FARM_PATH).unwrap(), "Degraded");
    assert_eq!(degraded["reason"], "ServiceTypeNotAllowed");
    let message = degraded["message"].as_str().unwrap();
    assert!(
        message.contains("LoadBalancer") && message.contains("allowedServiceTypes"),
        "{message}"
    );
    assert!(
        api.event_reasons()
            .contains(&"ServiceTypeNotAllowed".to_owned())
    );
}

/// Installed for some namespaces only (chart value `farmNamespaces`), the operator refuses a
/// farm elsewhere before touching anything there: it holds no Secret rights in that namespace.
#[tokio::test]
async fn a_farm_outside_the_served_namespaces_is_refused_before_anything_is_made() {
    let api = FakeApi::default();
    api.put(FARM_PATH, farm_json(3));
    let ctx = context_with(
        api.client(),
        Settings {
            farm_namespaces: vec!["shop".into(), "outlet".into()],
            ..settings()
        },
    );
    let action = reconcile_stored(&api, &ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    let writes: Vec<String> = api
        .writes()
        .into_iter()
        .filter(|w| w.method != Method::GET && !w.path.contains("/events"))
        .map(|w| w.path)
        .collect();
    assert_eq!(
        writes,
        [format!("{FARM_PATH}/status")],
        "only the farm's status"
    );
    assert!(api.get(SECRET_PATH).is_none(), "no Secret, not even read");
    assert!(api.writes().iter().all(|w| !w.path.contains("/secrets")));
    let degraded = condition(&api.get(FARM_PATH).unwrap(), "Degraded");
    assert_eq!(degraded["reason"], "NamespaceNotAllowed");
    let message = degraded["message"].as_str().unwrap();
    assert!(
        message.contains("shop, outlet") && message.contains("farmNamespaces"),
        "{message}"
    );

    // In a served namespace it is reconciled as usual.
    let ctx = context_with(
        api.client(),
        Settings {
            farm_namespaces: vec!["prod".into()],
            ..settings()
        },
    );
    reconcile_stored(&api, &ctx).await.unwrap();
    assert!(api.get(SECRET_PATH).is_some());
}
