//! The operator API against a real server on a temp SQLite database: roles, artifact upload and refusal, the
//! device registry, direct deployments, the compliance report, the audit log, and the OpenAPI document.

mod common;

use std::path::Path;

use common::Backend;

use ed25519_dalek::SigningKey;
use otter_server::api;
use otter_server::config::Config;
use reqwest::StatusCode;
use serde_json::{Value, json};

type Server = common::ApiServer;

async fn server(backend: Backend, tune: impl FnOnce(&mut Config)) -> Server {
    common::api_server(backend, tune).await
}

fn artifact(dir: &Path, key: &SigningKey, version: &str, compatible: &str) -> Vec<u8> {
    common::small_artifact(dir, key, version, compatible, 3, 300_000)
}

use reqwest::Method;

async fn every_call_needs_a_valid_token_and_the_right_role(b: Backend) {
    let s = server(b, |_| {}).await;
    let (st, v) = s.call("", Method::GET, "/api/v1/whoami", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
    let (st, _) = s.call("otk_nonsense", Method::GET, "/api/v1/whoami", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let viewer = s.token("viewer", "viewer").await;
    let (st, v) = s.call(&viewer, Method::GET, "/api/v1/whoami", None).await;
    assert_eq!((st, v["role"].as_str()), (StatusCode::OK, Some("viewer")));
    // A viewer reads but changes nothing; an approver does not publish; only an admin makes tokens.
    let (st, _) = s.call(&viewer, Method::GET, "/api/v1/devices", None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = s.call(&viewer, Method::POST, "/api/v1/devices", Some(json!({"controller_id": "x"}))).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let approver = s.token("approver", "approver").await;
    let (st, _) = s.upload_as(&approver, artifact(&s.dir, &s.key, "1.0", "gw"), "gw.otter").await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let operator = s.token("operator", "operator").await;
    let (st, _) = s.call(&operator, Method::POST, "/api/v1/tokens", Some(json!({"name": "x", "role": "admin"}))).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // A revoked token stops working at once.
    let (_, list) = s.call(&s.admin, Method::GET, "/api/v1/tokens", None).await;
    let id = list.as_array().unwrap().iter().find(|t| t["name"] == "viewer").unwrap()["id"].as_i64().unwrap();
    let (st, _) = s.call(&s.admin, Method::DELETE, &format!("/api/v1/tokens/{id}"), None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s.call(&viewer, Method::GET, "/api/v1/whoami", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // Token secrets are never listed, and the database holds only their hashes.
    assert!(!list.to_string().contains(&viewer));
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT token_hash FROM api_tokens").fetch_all(&s.state.db.pool).await.unwrap();
    assert!(stored.iter().all(|h| h != &viewer && h.len() == 64));
}

async fn a_signed_artifact_is_stored_once_and_a_bad_one_is_refused_without_a_trace(b: Backend) {
    let s = server(b, |_| {}).await;
    let good = artifact(&s.dir, &s.key, "2.1", "gw");
    let (st, a) = s.upload_as(&s.admin, good.clone(), "gw.otter").await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    assert_eq!(
        (a["version"].as_str(), a["security_version"].as_i64(), a["compatible"][0].as_str()),
        (Some("2.1"), Some(3), Some("gw"))
    );
    assert_eq!(a["size"].as_i64(), Some(good.len() as i64));
    let sha = a["sha256"].as_str().unwrap();
    assert_eq!(std::fs::read(s.state.store.path_of(sha)).unwrap(), good);
    // The same bytes again: the same artifact.
    let (st, again) = s.upload_as(&s.admin, good.clone(), "gw.otter").await;
    assert_eq!((st, &again["id"]), (StatusCode::OK, &a["id"]));

    // Signed by a key the server does not trust; one flipped byte; truncated; not an artifact at all.
    let stranger = otter_artifact::keys::generate().unwrap();
    // A byte of the signed manifest (it follows the first 512-byte tar header).
    let mut flipped = good.clone();
    flipped[600] ^= 1;
    for (bad, why) in [
        (artifact(&s.dir, &stranger, "6.6", "gw"), "unknown keys"),
        (flipped, ""),
        (good[..good.len() - 2000].to_vec(), "truncated"),
        (b"hello".to_vec(), ""),
    ] {
        let (st, v) = s.upload_as(&s.admin, bad, "gw.otter").await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert!(v["message"].as_str().unwrap().contains(why), "{v}");
    }
    let (_, list) = s.call(&s.admin, Method::GET, "/api/v1/artifacts", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let leftovers = std::fs::read_dir(s.dir.join("data/artifacts/tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "refused uploads leave no file behind");
}

async fn an_oversized_upload_is_refused(b: Backend) {
    let s = server(b, |c| c.max_upload = 1_000).await;
    let (st, v) = s.upload_as(&s.admin, artifact(&s.dir, &s.key, "1.0", "gw"), "gw.otter").await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(std::fs::read_dir(s.dir.join("data/artifacts/tmp")).unwrap().count(), 0);
}

async fn the_registry_filters_pages_and_manages_tokens(b: Backend) {
    let s = server(b, |_| {}).await;
    for i in 0..25 {
        let tags = if i % 5 == 0 { json!(["canary", "lab"]) } else { json!(["field"]) };
        let (st, v) = s
            .call(
                &s.admin,
                Method::POST,
                "/api/v1/devices",
                Some(json!({"controller_id": format!("gw-{i:03}"), "compatible": "gw", "tags": tags})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        assert!(v["target_token"].as_str().unwrap().starts_with("ott_"));
    }
    let (st, _) = s.call(&s.admin, Method::POST, "/api/v1/devices", Some(json!({"controller_id": "gw-000"}))).await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, _) = s.call(&s.admin, Method::POST, "/api/v1/devices", Some(json!({"controller_id": "a/b"}))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (_, page) = s.call(&s.admin, Method::GET, "/api/v1/devices?limit=10&offset=20", None).await;
    assert_eq!(page["total"], 25);
    let ids: Vec<_> =
        page["devices"].as_array().unwrap().iter().map(|d| d["controller_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, ["gw-020", "gw-021", "gw-022", "gw-023", "gw-024"]);
    let (_, canaries) = s.call(&s.admin, Method::GET, "/api/v1/devices?tag=canary", None).await;
    assert_eq!(canaries["total"], 5);
    let (_, found) = s.call(&s.admin, Method::GET, "/api/v1/devices?q=01", None).await;
    assert_eq!(found["total"], 11, "gw-001 and gw-010..gw-019");
    // Wildcards in the search are literal.
    let (_, none) = s.call(&s.admin, Method::GET, "/api/v1/devices?q=%25", None).await;
    assert_eq!(none["total"], 0);

    let (st, d) =
        s.call(&s.admin, Method::PUT, "/api/v1/devices/gw-001/tags", Some(json!({"tags": ["lab", "eu"]}))).await;
    assert_eq!((st, d["tags"].clone()), (StatusCode::OK, json!(["eu", "lab"])));
    let (_, rotated) = s.call(&s.admin, Method::POST, "/api/v1/devices/gw-001/token", None).await;
    let token = rotated["target_token"].as_str().unwrap();
    assert_eq!(otter_server::devices::by_token(&s.state.db, token).await.unwrap().unwrap().controller_id, "gw-001");
    let (st, _) = s.call(&s.admin, Method::DELETE, "/api/v1/devices/gw-001/token", None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(otter_server::devices::by_token(&s.state.db, token).await.unwrap().is_none());
    let (st, _) = s.call(&s.admin, Method::DELETE, "/api/v1/devices/nobody/token", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (_, one) = s.call(&s.admin, Method::GET, "/api/v1/devices/gw-001", None).await;
    let events: Vec<_> =
        one["audit"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap().to_owned()).collect();
    assert_eq!(events, ["device.token-revoked", "device.token-rotated", "device.tagged", "device.registered"]);
    assert_eq!(one["device"]["has_token"], false);
}

async fn a_direct_deployment_shows_as_desired_and_can_be_cancelled(b: Backend) {
    let s = server(b, |_| {}).await;
    let (_, a) = s.upload_as(&s.admin, artifact(&s.dir, &s.key, "3.0", "gw"), "gw.otter").await;
    s.call(&s.admin, Method::POST, "/api/v1/devices", Some(json!({"controller_id": "gw-1", "compatible": "gw"}))).await;
    s.call(&s.admin, Method::POST, "/api/v1/devices", Some(json!({"controller_id": "other", "compatible": "other"})))
        .await;
    let body = json!({"artifact_id": a["id"], "kind": "forced"});
    let (st, v) = s.call(&s.admin, Method::POST, "/api/v1/devices/other/actions", Some(body.clone())).await;
    assert_eq!(st, StatusCode::CONFLICT, "an artifact for another device type: {v}");
    let (st, v) = s.call(&s.admin, Method::POST, "/api/v1/devices/gw-1/actions", Some(body.clone())).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let action = v["action"].as_i64().unwrap();
    let (st, _) = s.call(&s.admin, Method::POST, "/api/v1/devices/gw-1/actions", Some(body)).await;
    assert_eq!(st, StatusCode::CONFLICT, "one open action per device");
    let (_, one) = s.call(&s.admin, Method::GET, "/api/v1/devices/gw-1", None).await;
    let dr = &one["desired_reported"];
    assert_eq!(
        (dr["desired_version"].as_str(), dr["in_flight"].as_str(), dr["in_sync"].as_bool()),
        (Some("3.0"), Some("running"), Some(false))
    );
    let (st, v) = s.call(&s.admin, Method::POST, &format!("/api/v1/actions/{action}/cancel"), None).await;
    assert_eq!((st, v["state"].as_str()), (StatusCode::OK, Some("canceling")));
    let (st, _) = s.call(&s.admin, Method::POST, &format!("/api/v1/actions/{action}/cancel"), None).await;
    assert_eq!(st, StatusCode::CONFLICT);
}

async fn the_compliance_report_and_the_audit_chain(b: Backend) {
    let s = server(b, |_| {}).await;
    let (_, a) = s.upload_as(&s.admin, artifact(&s.dir, &s.key, "4.0", "gw"), "gw.otter").await;
    for id in ["gw-a", "gw-b", "=cmd"] {
        s.call(&s.admin, Method::POST, "/api/v1/devices", Some(json!({"controller_id": id, "compatible": "gw"}))).await;
    }
    // gw-a updated fine; gw-b failed.
    use otter_server::{actions, devices, model::ActionState};
    for (id, to, msg) in [("gw-a", ActionState::Finished, "ok"), ("gw-b", ActionState::Error, "slot B: disk full")] {
        let d = devices::by_controller_id(&s.state.db, id).await.unwrap().unwrap();
        let act = actions::create(&s.state.db, d.id, a["id"].as_i64().unwrap(), Default::default(), None, false)
            .await
            .unwrap();
        assert!(actions::transition(&s.state.db, act, &[ActionState::Running], to, Some(msg)).await.unwrap());
    }
    sqlx::query("UPDATE devices SET reported_version = '4.0' WHERE controller_id = 'gw-a'")
        .execute(&s.state.db.pool)
        .await
        .unwrap();
    let (st, c) = s.call(&s.admin, Method::GET, "/api/v1/compliance?min_security_version=3", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(c["below_minimum"], json!(["=cmd", "gw-b"]));
    assert_eq!(c["versions"], json!({"4.0": 1, "unknown": 2}));
    let b = c["devices"].as_array().unwrap().iter().find(|d| d["controller_id"] == "gw-b").unwrap();
    assert_eq!(b["last_failure"], "slot B: disk full");
    let csv = s.http.get(format!("{}/api/v1/compliance?format=csv", s.url)).bearer_auth(&s.admin).send().await.unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().await.unwrap();
    assert_eq!(csv.lines().count(), 4);
    assert!(csv.lines().any(|l| l.starts_with("gw-a,gw,4.0,") && l.contains(a["sha256"].as_str().unwrap())), "{csv}");
    assert!(csv.contains("\n'=cmd,"), "a formula-looking id is neutralised: {csv}");

    let (_, v) = s.call(&s.admin, Method::GET, "/api/v1/audit/verify", None).await;
    assert_eq!(v["broken"], Value::Null);
    let (_, log) = s.call(&s.admin, Method::GET, "/api/v1/audit?event=artifact.uploaded", None).await;
    assert_eq!(log.as_array().unwrap().len(), 1);
    sqlx::query("UPDATE audit SET actor = 'operator:nobody' WHERE seq = 2").execute(&s.state.db.pool).await.unwrap();
    let (_, v) = s.call(&s.admin, Method::GET, "/api/v1/audit/verify", None).await;
    assert_eq!(v["broken"]["problem"], "edited");
}

async fn rollouts_through_the_api_follow_the_roles(b: Backend) {
    let s = server(b, |_| {}).await;
    let (_, a) = s.upload_as(&s.admin, artifact(&s.dir, &s.key, "5.0", "gw"), "gw.otter").await;
    for i in 0..4 {
        let tags = if i == 0 { json!(["canary"]) } else { json!([]) };
        s.call(
            &s.admin,
            Method::POST,
            "/api/v1/devices",
            Some(json!({"controller_id": format!("gw-{i}"), "compatible": "gw", "tags": tags})),
        )
        .await;
    }
    let (viewer, operator, approver) = (
        s.token("viewer", "viewer").await,
        s.token("operator", "operator").await,
        s.token("approver", "approver").await,
    );
    let (_, n) =
        s.call(&viewer, Method::POST, "/api/v1/rollouts/preview", Some(json!({"filter": {"compatible": "gw"}}))).await;
    assert_eq!(n["matching"], 4);
    let (_, n) =
        s.call(&viewer, Method::POST, "/api/v1/rollouts/preview", Some(json!({"filter": {"tags": ["canary"]}}))).await;
    assert_eq!(n["matching"], 1);
    let body = json!({"name": "5.0", "artifact_id": a["id"], "filter": {"compatible": "gw"},
        "spec": {"groups": [{"name": "canary", "devices": ["gw-0"]}, {"name": "rest", "percent": 100, "approval": true}]}});
    let (st, _) = s.call(&viewer, Method::POST, "/api/v1/rollouts", Some(body.clone())).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, bad) = s
        .call(
            &operator,
            Method::POST,
            "/api/v1/rollouts",
            Some(json!({"name": "x", "artifact_id": a["id"], "spec": {"groups": []}})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}");
    let (st, r) = s.call(&operator, Method::POST, "/api/v1/rollouts", Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    let id = r["id"].as_i64().unwrap();
    // The canary's action exists once the scheduler has run; finish it as the device would.
    let start = std::time::Instant::now();
    let canary = otter_server::devices::by_controller_id(&s.state.db, "gw-0").await.unwrap().unwrap();
    let action = loop {
        if let Some(a) = otter_server::actions::active_for(&s.state.db, canary.id).await.unwrap() {
            break a;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "the scheduler never started the canary");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    use otter_server::model::ActionState;
    otter_server::actions::transition(&s.state.db, action.id, &[ActionState::Running], ActionState::Finished, None)
        .await
        .unwrap();
    let r = loop {
        let (_, r) = s.call(&viewer, Method::GET, &format!("/api/v1/rollouts/{id}"), None).await;
        if r["state"] == "waiting-approval" {
            break r;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "never waited for approval: {r}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(r["current_group"], 1);
    // An operator may not approve; an approver may; nobody approves twice.
    let (st, _) =
        s.call(&operator, Method::POST, &format!("/api/v1/rollouts/{id}/approve"), Some(json!({"group": 1}))).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, v) =
        s.call(&approver, Method::POST, &format!("/api/v1/rollouts/{id}/approve"), Some(json!({"group": 1}))).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, _) =
        s.call(&approver, Method::POST, &format!("/api/v1/rollouts/{id}/approve"), Some(json!({"group": 1}))).await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, v) = s.call(&operator, Method::POST, &format!("/api/v1/rollouts/{id}/cancel"), None).await;
    assert_eq!((st, v["state"].as_str()), (StatusCode::OK, Some("cancelled")), "{v}");
    let (_, log) = s.call(&viewer, Method::GET, &format!("/api/v1/audit?subject=rollout:{id}&limit=50"), None).await;
    let events: Vec<&str> = log.as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    for e in ["rollout.created", "rollout.approved", "rollout.cancelled"] {
        assert!(events.contains(&e), "{e} missing from {events:?}");
    }
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let s = server(Backend::Sqlite, |_| {}).await;
    let doc: Value = serde_json::from_str(api::OPENAPI).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    // Every `.route("…")` in the API's sources is documented…
    let sources = [
        include_str!("../src/api/mod.rs"),
        include_str!("../src/api/admin.rs"),
        include_str!("../src/api/artifacts.rs"),
        include_str!("../src/api/audit.rs"),
        include_str!("../src/api/devices.rs"),
        include_str!("../src/api/rollouts.rs"),
    ];
    let mut routed = Vec::new();
    for src in sources {
        for part in src.split(".route(\"").skip(1) {
            routed.push(part.split('"').next().unwrap().to_owned());
        }
    }
    assert!(routed.len() > 10);
    for r in &routed {
        assert!(paths.contains_key(r), "route {r} is not in openapi.json");
    }
    // …and every documented path and method is served (a routing miss is axum's bare 404/405).
    for (path, item) in paths {
        assert!(routed.contains(path), "openapi.json documents {path}, which no route serves");
        for method in item.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", "1").replace("{group}", "0");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = s.http.request(m, format!("{}{concrete}", s.url)).send().await.unwrap();
            assert_ne!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(
                r.status() != StatusCode::NOT_FOUND || !r.text().await.unwrap().is_empty(),
                "{method} {path} is not routed"
            );
        }
    }
}

// Each scenario runs on SQLite and on a real PostgreSQL server.
on_both!(
    rollouts_through_the_api_follow_the_roles,
    every_call_needs_a_valid_token_and_the_right_role,
    a_signed_artifact_is_stored_once_and_a_bad_one_is_refused_without_a_trace,
    an_oversized_upload_is_refused,
    the_registry_filters_pages_and_manages_tokens,
    a_direct_deployment_shows_as_desired_and_can_be_cancelled,
    the_compliance_report_and_the_audit_chain
);

/// Past `max_device_requests` requests in progress, a device gets 503 with Retry-After at once (bounded memory
/// under overload); the server answers again as soon as one finishes.
#[tokio::test]
async fn an_overloaded_device_api_sheds_requests_instead_of_queueing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = server(Backend::Sqlite, |c| c.max_device_requests = 1).await;
    let (_, reg) = s.call(&s.admin, Method::POST, "/api/v1/devices", Some(json!({"controller_id": "gw-1"}))).await;
    let token = reg["target_token"].as_str().unwrap().to_owned();
    let poll = format!("{}/DEFAULT/controller/v1/gw-1", s.url);
    // A configData upload whose body arrives slowly holds the only slot while the server reads it.
    let body = br#"{"mode":"merge","data":{"serial":"1"}}"#;
    let mut slow = tokio::net::TcpStream::connect(s.url.trim_start_matches("http://")).await.unwrap();
    let head = format!(
        "PUT /DEFAULT/controller/v1/gw-1/configData HTTP/1.1\r\nHost: x\r\nAuthorization: TargetToken {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let busy = s.http.get(&poll).header("Authorization", format!("TargetToken {token}")).send().await.unwrap();
    assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(busy.headers()["retry-after"], "5");
    slow.write_all(&body[10..]).await.unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let ok = s.http.get(&poll).header("Authorization", format!("TargetToken {token}")).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}
