//! The session API's OpenAPI document: the checked-in `docs/session-api.openapi.json` is the
//! one the code generates, and a real sidecar (on a real PostgreSQL) answers every documented
//! operation with a documented status and a body of the documented type.
//!
//! After changing the API: `STICKYFARM_BLESS=1 cargo test -p stickyfarm-sidecar --test openapi`
//! rewrites the document; review its diff like code.

use std::path::PathBuf;

use serde_json::{Value, json};
use stickyfarm_api::SessionSnapshot;
use stickyfarm_api::session_api::{ApiError, Rotated, WriteAck};
use stickyfarm_testkit::{Browser, TestDb, Unit};

fn checked_in() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/session-api.openapi.json"
    ))
}

fn generated() -> String {
    stickyfarm_sidecar::session_api::openapi()
        .to_pretty_json()
        .expect("the document serializes")
        + "\n"
}

#[test]
fn the_checked_in_document_is_the_generated_one() {
    let now = generated();
    if std::env::var_os("STICKYFARM_BLESS").is_some() {
        std::fs::write(checked_in(), &now).unwrap();
        return;
    }
    let file = std::fs::read_to_string(checked_in()).unwrap_or_default();
    assert!(
        file == now,
        "docs/session-api.openapi.json is not what the code generates; after reviewing the API \
         change run `STICKYFARM_BLESS=1 cargo test -p stickyfarm-sidecar --test openapi`"
    );
    let doc: Value = serde_json::from_str(&now).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // The headers the app receives are part of the contract.
    let proxied = &doc["webhooks"]["proxiedRequest"]["get"]["parameters"];
    let names: Vec<&str> = proxied
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for h in [
        "x-stickyfarm-session",
        "x-stickyfarm-unit",
        "x-stickyfarm-unit-url",
        "x-stickyfarm-instance",
        "x-stickyfarm-generation",
        "x-stickyfarm-snapshot",
        "x-request-id",
    ] {
        assert!(names.contains(&h), "{h} is not documented: {names:?}");
    }
}

/// The documented responses of `method` on `path`.
fn documented(doc: &Value, path: &str, method: &str) -> Vec<u16> {
    doc["paths"][path][method]["responses"]
        .as_object()
        .unwrap_or_else(|| panic!("{method} {path} is not documented"))
        .keys()
        .map(|s| s.parse().unwrap())
        .collect()
}

/// Sends one request to the API and checks its status is documented for the operation.
async fn call(
    doc: &Value,
    api: &str,
    method: &str,
    template: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(
        method.to_uppercase().parse().unwrap(),
        format!("{api}{path}"),
    );
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    assert!(
        documented(doc, template, method).contains(&status),
        "{method} {path} answered {status}, which is not documented: {text}"
    );
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_real_sidecar_answers_as_documented() {
    let doc: Value = serde_json::from_str(&generated()).unwrap();
    let db = TestDb::new().await;
    let unit = Unit::start(
        "u1",
        &db.url,
        &["--max-table-size", "4KiB", "--max-json-depth", "8"],
    )
    .await;
    let api = format!("http://{}", unit.sidecar.api);

    // Every documented operation refuses a malformed id with 400 and the error body.
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 3, "{:?}", paths.keys());
    for (template, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let path = template
                .replace("{id}", "not-a-session-id")
                .replace("{table}", "cart");
            let body = (method == "put").then(|| json!([]));
            let (status, body) = call(&doc, &api, method, template, &path, &[], body).await;
            assert_eq!(status, 400, "{method} {path}");
            let e: ApiError = serde_json::from_value(body).expect("the error body");
            assert!(e.error.contains("session id"), "{}", e.error);
        }
    }

    // A session's life, each answer of its documented type.
    let mut shopper = Browser::new();
    shopper.get(&unit.sidecar.url("/echo")).await;
    let sid = shopper.cookie("sf_session").unwrap().to_owned();
    let table = "/v1/sessions/{id}/tables/{table}";
    let session = "/v1/sessions/{id}";
    let cart = format!("/v1/sessions/{sid}/tables/cart");
    let (s, b) = call(
        &doc,
        &api,
        "put",
        table,
        &cart,
        &[("if-match", "\"0\"")],
        Some(json!(["apple"])),
    )
    .await;
    assert_eq!(s, 201);
    let ack: WriteAck = serde_json::from_value(b).unwrap();
    assert_eq!(ack.version, 1);
    let (s, b) = call(
        &doc,
        &api,
        "put",
        table,
        &cart,
        &[("if-match", "\"1\"")],
        Some(json!(["apple", "fig"])),
    )
    .await;
    assert_eq!(
        (s, serde_json::from_value::<WriteAck>(b).unwrap().version),
        (200, 2)
    );
    let (s, b) = call(
        &doc,
        &api,
        "put",
        table,
        &cart,
        &[("if-match", "\"1\"")],
        Some(json!(["pear"])),
    )
    .await;
    assert_eq!(s, 409);
    let stale: ApiError = serde_json::from_value(b).unwrap();
    assert_eq!(stale.current_version, Some(Some(2)));
    let (s, b) = call(&doc, &api, "get", table, &cart, &[], None).await;
    assert_eq!((s, b), (200, json!(["apple", "fig"])));
    // Too large, too deep: refused with the limit named, the table unchanged.
    let big = json!(["x".repeat(5000)]);
    let (s, b) = call(&doc, &api, "put", table, &cart, &[], Some(big)).await;
    assert_eq!(s, 413);
    let e: ApiError = serde_json::from_value(b).unwrap();
    assert!(e.error.contains("--max-table-size"), "{}", e.error);
    let deep: Value =
        serde_json::from_str(&format!("{}{}", "[".repeat(20), "]".repeat(20))).unwrap();
    let (s, b) = call(&doc, &api, "put", table, &cart, &[], Some(deep)).await;
    assert_eq!(s, 422);
    let e: ApiError = serde_json::from_value(b).unwrap();
    assert!(e.error.contains("--max-json-depth"), "{}", e.error);
    let (s, b) = call(&doc, &api, "get", table, &cart, &[], None).await;
    assert_eq!((s, b), (200, json!(["apple", "fig"])));
    let (s, b) = call(
        &doc,
        &api,
        "get",
        session,
        &format!("/v1/sessions/{sid}"),
        &[],
        None,
    )
    .await;
    assert_eq!(s, 200);
    let snap: SessionSnapshot = serde_json::from_value(b).unwrap();
    assert_eq!(snap.id.to_string(), sid);
    let rotate = "/v1/sessions/{id}/rotate";
    let (s, b) = call(
        &doc,
        &api,
        "post",
        rotate,
        &format!("/v1/sessions/{sid}/rotate"),
        &[],
        None,
    )
    .await;
    assert_eq!(s, 200);
    let new = serde_json::from_value::<Rotated>(b).unwrap().id.to_string();
    assert_ne!(new, sid);
    let (s, _) = call(&doc, &api, "get", table, &cart, &[], None).await;
    assert_eq!(s, 404, "the old id is dead");
    let cart = format!("/v1/sessions/{new}/tables/cart");
    let (s, _) = call(
        &doc,
        &api,
        "delete",
        table,
        &cart,
        &[("if-match", "\"2\"")],
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = call(
        &doc,
        &api,
        "delete",
        session,
        &format!("/v1/sessions/{new}"),
        &[],
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, b) = call(
        &doc,
        &api,
        "delete",
        session,
        &format!("/v1/sessions/{new}"),
        &[],
        None,
    )
    .await;
    assert_eq!(s, 404);
    serde_json::from_value::<ApiError>(b).expect("the error body");
}
