//! The device API (hawkBit DDI) over HTTP against a real listener: authentication, the poll, deployments,
//! feedback, configData, cancel, consent, downloads and enrollment.

mod common;

use common::{Backend, Server, TYPE, start};
use otter_server::actions;
use otter_server::links::Grant;
use otter_server::model::{ActionKind, ActionState};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    otter_common::http::init_tls();
    reqwest::Client::new()
}

async fn get(url: &str, auth: &str) -> (StatusCode, Value) {
    let r = client().get(url).header("Authorization", auth).send().await.unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn send(method: reqwest::Method, url: &str, auth: &str, body: &Value) -> (StatusCode, Value) {
    let r = client().request(method, url).header("Authorization", auth).json(body).send().await.unwrap();
    let s = r.status();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn post(url: &str, auth: &str, body: &Value) -> StatusCode {
    send(reqwest::Method::POST, url, auth, body).await.0
}

fn tt(token: &str) -> String {
    format!("TargetToken {token}")
}

fn feedback(execution: &str, finished: &str, details: &[&str]) -> Value {
    json!({"timestamp": 1, "status": {"execution": execution, "result": {"finished": finished}, "details": details}})
}

/// A server with one device `dev1` and one artifact; returns (server, device row id, token, artifact id).
async fn one_device(b: Backend) -> (Server, i64, String, otter_server::artifacts::Artifact) {
    let s = start(b, |_| {}).await;
    let (id, token) = s.device("dev1").await;
    let (a, _) = s.publish("2.0", 2, 300 << 10).await;
    (s, id, token, a)
}

async fn target_tokens_are_per_device_and_a_claimed_id_is_refused_and_audited(b: Backend) {
    let s = start(b, |_| {}).await;
    let (_, t1) = s.device("dev1").await;
    let (_, t2) = s.device("dev2").await;
    assert_eq!(get(&s.base("dev1"), &tt(&t1)).await.0, StatusCode::OK);
    // No credential, a wrong token, a wrong scheme.
    let r = client().get(s.base("dev1")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(get(&s.base("dev1"), "TargetToken ott_nope").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&s.base("dev1"), &format!("Bearer {t1}")).await.0, StatusCode::UNAUTHORIZED);
    // dev2's token under dev1's id.
    assert_eq!(get(&s.base("dev1"), &tt(&t2)).await.0, StatusCode::UNAUTHORIZED);
    let audit = s.audit().await;
    let claim = audit.iter().find(|e| e.0 == "device.id-mismatch").expect("the claim is audited");
    assert_eq!((claim.1.as_str(), claim.2.as_str()), ("device:dev2", "device:dev1"));
    // A token for an id nobody has, another tenant.
    assert_eq!(get(&s.base("dev9"), &tt(&t1)).await.0, StatusCode::UNAUTHORIZED);
    let other_tenant = format!("{}/OTHER/controller/v1/dev1", s.url);
    assert_eq!(get(&other_tenant, &tt(&t1)).await.0, StatusCode::NOT_FOUND);
    // A revoked token stops working at once.
    otter_server::devices::revoke_token(&s.state.db, "dev1", "operator:test").await.unwrap();
    assert_eq!(get(&s.base("dev1"), &tt(&t1)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&s.base("dev2"), &tt(&t2)).await.0, StatusCode::OK);
}

async fn the_gateway_token_acts_for_any_device_and_registers_only_with_auto_register(b: Backend) {
    for auto in [false, true] {
        let s = start(b, |c| {
            c.gateway_token = Some("gw-secret".into());
            c.auto_register = auto;
        })
        .await;
        s.device("dev1").await;
        assert_eq!(get(&s.base("dev1"), "GatewayToken gw-secret").await.0, StatusCode::OK);
        assert_eq!(get(&s.base("dev1"), "GatewayToken gw-wrong").await.0, StatusCode::UNAUTHORIZED);
        let (status, body) = get(&s.base("new-1"), "GatewayToken gw-secret").await;
        let registered = otter_server::devices::identity(&s.state.db, "new-1").await.unwrap().is_some();
        if auto {
            assert_eq!(status, StatusCode::OK, "{body}");
            assert!(registered);
            assert!(body["_links"]["configData"]["href"].is_string(), "a new device is asked for attributes");
            let audit = s.audit().await;
            assert!(audit.iter().any(|e| e.0 == "device.registered" && e.2 == "device:new-1" && e.1 == "gateway"));
        } else {
            assert_eq!(status, StatusCode::NOT_FOUND);
            assert!(!registered);
        }
        // Only the poll registers.
        let r = send(
            reqwest::Method::PUT,
            &format!("{}/configData", s.base("new-2")),
            "GatewayToken gw-secret",
            &json!({"data": {"a": "1"}}),
        )
        .await;
        assert_eq!(r.0, StatusCode::NOT_FOUND);
    }
    // No gateway token configured: none is accepted.
    let s = start(b, |_| {}).await;
    s.device("dev1").await;
    assert_eq!(get(&s.base("dev1"), "GatewayToken ").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(get(&s.base("dev1"), "GatewayToken anything").await.0, StatusCode::UNAUTHORIZED);
}

async fn a_client_certificate_cn_counts_only_behind_a_trusted_proxy(b: Backend) {
    for trusted in [false, true] {
        let s = start(b, |c| c.trust_proxy_client_cert = trusted).await;
        s.device("dev1").await;
        let cn = |v: &str| client().get(s.base("dev1")).header("X-Client-Cert-CN", v).send();
        let ok = cn("dev1").await.unwrap().status();
        assert_eq!(ok, if trusted { StatusCode::OK } else { StatusCode::UNAUTHORIZED });
        assert_eq!(cn("dev2").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
}

async fn a_request_records_last_seen(b: Backend) {
    let (s, _, token, _) = one_device(b).await;
    assert_eq!(s.text("SELECT CAST(last_seen_ms AS TEXT) FROM devices").await, None);
    get(&s.base("dev1"), &tt(&token)).await;
    let first = s.int("SELECT last_seen_ms FROM devices").await;
    assert!(first > 0);
    // Within the resolution (300 s): not written again (the hot path).
    get(&s.base("dev1"), &tt(&token)).await;
    s.exec("UPDATE devices SET last_seen_ms = last_seen_ms - 200000").await;
    get(&s.base("dev1"), &tt(&token)).await;
    assert!(s.state.seen.is_empty());
    assert_eq!(s.int("SELECT last_seen_ms FROM devices").await, first - 200_000);
    // Older than that: noted, and written with the next batch.
    s.exec("UPDATE devices SET last_seen_ms = last_seen_ms - 200000").await;
    get(&s.base("dev1"), &tt(&token)).await;
    assert_eq!(s.state.seen.flush(&s.state.db).await.unwrap(), 1);
    assert!(s.int("SELECT last_seen_ms FROM devices").await >= first);
}

async fn last_seen_times_are_written_in_batches_and_never_go_back(b: Backend) {
    let s = start(b, |_| {}).await;
    // More devices than one statement takes.
    let rows: Vec<String> =
        (0..450).map(|i| format!("('seen-{i}', 0, {})", if i == 7 { 5000 } else { 1000 })).collect();
    s.exec(&format!("INSERT INTO devices (controller_id, created_ms, last_seen_ms) VALUES {}", rows.join(", "))).await;
    let ids: Vec<i64> = sqlx::query("SELECT id FROM devices ORDER BY id")
        .fetch_all(&s.state.db.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| sqlx::Row::get(r, "id"))
        .collect();
    let buffer = otter_server::devices::SeenBuffer::default();
    for id in &ids {
        buffer.note(*id, 3000);
    }
    assert_eq!(buffer.flush(&s.state.db).await.unwrap(), 450);
    assert!(buffer.is_empty());
    assert_eq!(s.int("SELECT COUNT(*) FROM devices WHERE last_seen_ms = 3000").await, 449);
    // seen-7 was seen later (by another instance, say): its time stays.
    assert_eq!(s.int("SELECT last_seen_ms FROM devices WHERE controller_id = 'seen-7'").await, 5000);
}

async fn the_poll_gives_the_sleep_and_one_action_link(b: Backend) {
    let (s, dev, token, a) = one_device(b).await;
    let (status, body) = get(&s.base("dev1"), &tt(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["config"]["polling"]["sleep"], "00:05:00");
    let links = body["_links"].as_object().unwrap();
    assert_eq!(links.keys().collect::<Vec<_>>(), ["configData"], "{body}");
    assert_eq!(links["configData"]["href"], format!("{}/configData", s.base("dev1")));

    let id = s.action(dev, a.id, ActionKind::Soft, false).await;
    let body = get(&s.base("dev1"), &tt(&token)).await.1;
    let href = body["_links"]["deploymentBase"]["href"].as_str().unwrap().to_owned();
    assert!(href.starts_with(&format!("{}/deploymentBase/{id}?c=", s.base("dev1"))), "{href}");
    assert!(body["_links"].get("cancelAction").is_none() && body["_links"].get("confirmationBase").is_none());
    // The same offer, the same link; another kind, another `c`.
    assert_eq!(get(&s.base("dev1"), &tt(&token)).await.1["_links"]["deploymentBase"]["href"], href.as_str());
    s.exec(&format!("UPDATE actions SET kind = 'forced' WHERE id = {id}")).await;
    let forced = get(&s.base("dev1"), &tt(&token)).await.1["_links"]["deploymentBase"]["href"].clone();
    assert_ne!(forced, href.as_str());

    // Canceling: the cancel link instead.
    actions::transition(&s.state.db, id, &[ActionState::Running], ActionState::Canceling, None).await.unwrap();
    let body = get(&s.base("dev1"), &tt(&token)).await.1;
    assert_eq!(body["_links"]["cancelAction"]["href"], format!("{}/cancelAction/{id}", s.base("dev1")));
    assert!(body["_links"].get("deploymentBase").is_none());

    // Finished: installedBase, and attributes are asked for again.
    actions::transition(&s.state.db, id, &[ActionState::Canceling], ActionState::Finished, None).await.unwrap();
    let body = get(&s.base("dev1"), &tt(&token)).await.1;
    assert_eq!(body["_links"]["installedBase"]["href"], format!("{}/installedBase/{id}", s.base("dev1")));
    assert!(body["_links"].get("cancelAction").is_none());
    let (status, installed) = get(&format!("{}/installedBase/{id}", s.base("dev1")), &tt(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(installed["id"], id.to_string());
    assert_eq!(installed["deployment"]["chunks"][0]["version"], "2.0");
    // Not an open deployment any more.
    assert_eq!(get(&format!("{}/deploymentBase/{id}", s.base("dev1")), &tt(&token)).await.0, StatusCode::NOT_FOUND);
}

/// Inserts a rollout of `artifact` with `spec` and makes the device a member; returns the rollout id.
async fn rollout(s: &Server, artifact: i64, device: i64, spec: Value, state: &str) -> i64 {
    let now = otter_server::db::now_ms();
    let r = sqlx::query(
        "INSERT INTO rollouts (name, artifact_id, filter, spec, speed, state, created_by, created_ms, updated_ms) \
         VALUES ('r', $1, '{}', $2, $5, $3, 'operator:test', $4, $4) RETURNING id",
    )
    .bind(artifact)
    .bind(spec.to_string())
    .bind(state)
    .bind(now)
    .bind(spec["speed"].as_str().unwrap_or("standard").to_owned())
    .fetch_one(&s.state.db.pool)
    .await
    .unwrap();
    let id: i64 = sqlx::Row::get(&r, "id");
    s.exec(&format!("INSERT INTO rollout_members (rollout_id, device_id, group_idx) VALUES ({id}, {device}, 0)")).await;
    id
}

async fn a_fast_release_shortens_the_sleep_while_it_runs(b: Backend) {
    let (s, dev, token, a) = one_device(b).await;
    let spec = json!({"groups": [{"name": "all", "percent": 100}], "speed": "fast"});
    let r = rollout(&s, a.id, dev, spec, "running").await;
    assert_eq!(get(&s.base("dev1"), &tt(&token)).await.1["config"]["polling"]["sleep"], "00:00:10");
    s.exec(&format!("UPDATE rollouts SET state = 'finished' WHERE id = {r}")).await;
    assert_eq!(get(&s.base("dev1"), &tt(&token)).await.1["config"]["polling"]["sleep"], "00:05:00");
}

async fn the_deployment_names_the_artifact_with_hashes_and_a_signed_link(b: Backend) {
    let (s, dev, token, a) = one_device(b).await;
    for (kind, download, update) in [
        (ActionKind::Forced, "forced", "forced"),
        (ActionKind::Soft, "attempt", "attempt"),
        (ActionKind::DownloadOnly, "forced", "skip"),
    ] {
        let id = s.action(dev, a.id, kind, false).await;
        let (status, d) = get(&format!("{}/deploymentBase/{id}?c=1", s.base("dev1")), &tt(&token)).await;
        assert_eq!(status, StatusCode::OK, "{d}");
        assert_eq!(d["id"], id.to_string());
        assert_eq!(
            (d["deployment"]["download"].as_str(), d["deployment"]["update"].as_str()),
            (Some(download), Some(update))
        );
        assert!(d["deployment"].get("maintenanceWindow").is_none());
        assert!(d.get("actionHistory").is_none());
        let chunk = &d["deployment"]["chunks"][0];
        assert_eq!((chunk["part"].as_str(), chunk["version"].as_str()), (Some("os"), Some("2.0")));
        let art = &chunk["artifacts"][0];
        assert_eq!(art["filename"], "update-2.0.otter");
        assert_eq!(art["size"], a.size);
        assert_eq!(art["hashes"], json!({"sha1": a.sha1, "md5": a.md5, "sha256": a.sha256}));
        let href = art["_links"]["download"]["href"].as_str().unwrap();
        assert_eq!(art["_links"]["download-http"]["href"], href);
        assert!(href.starts_with(&format!("{}/artifacts/{}/update-2.0.otter?device=dev1&expires=", s.url, a.sha256)));
        // The link works without any credential.
        let r = client().get(href).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        actions::transition(&s.state.db, id, &[ActionState::Running], ActionState::Canceled, None).await.unwrap();
    }
    // Another device's action, a missing one, a non-number.
    let (dev2, t2) = s.device("dev2").await;
    let id = s.action(dev, a.id, ActionKind::Soft, false).await;
    let _ = dev2;
    assert_eq!(get(&format!("{}/deploymentBase/{id}", s.base("dev2")), &tt(&t2)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(&format!("{}/deploymentBase/99999", s.base("dev1")), &tt(&token)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(&format!("{}/deploymentBase/x1", s.base("dev1")), &tt(&token)).await.0, StatusCode::NOT_FOUND);
    // actionHistory: the device's messages, newest last.
    let fb = format!("{}/deploymentBase/{id}/feedback", s.base("dev1"));
    assert_eq!(post(&fb, &tt(&token), &feedback("proceeding", "none", &["one"])).await, StatusCode::OK);
    assert_eq!(post(&fb, &tt(&token), &feedback("proceeding", "none", &["two", "three"])).await, StatusCode::OK);
    let d = get(&format!("{}/deploymentBase/{id}?actionHistory=2", s.base("dev1")), &tt(&token)).await.1;
    assert_eq!(d["actionHistory"], json!({"status": "RUNNING", "messages": ["two", "three"]}));
    let d = get(&format!("{}/deploymentBase/{id}?actionHistory=-1", s.base("dev1")), &tt(&token)).await.1;
    assert_eq!(d["actionHistory"]["messages"], json!(["one", "two", "three"]));
    let r = get(&format!("{}/deploymentBase/{id}?actionHistory=many", s.base("dev1")), &tt(&token)).await;
    assert_eq!(r.0, StatusCode::BAD_REQUEST);
}

async fn a_maintenance_window_is_announced_and_a_closed_one_skips_the_update(b: Backend) {
    let (s, dev, token, a) = one_device(b).await;
    let minute = (otter_server::db::now_ms() / 60_000 % 1440) as u32;
    for (start, open) in [((minute + 1439) % 1440, true), ((minute + 120) % 1440, false)] {
        let spec = json!({"groups": [{"name": "all", "percent": 100}], "kind": "forced",
            "window": {"start_minute": start, "duration_minutes": 30}});
        let r = rollout(&s, a.id, dev, spec, "running").await;
        let id = otter_server::actions::create(&s.state.db, dev, a.id, ActionKind::Forced, Some((r, 0)), false)
            .await
            .unwrap();
        let d = get(&format!("{}/deploymentBase/{id}", s.base("dev1")), &tt(&token)).await.1;
        let (mw, update) = if open { ("available", "forced") } else { ("unavailable", "skip") };
        assert_eq!(d["deployment"]["maintenanceWindow"], mw, "{d}");
        assert_eq!(d["deployment"]["update"], update);
        assert_eq!(d["deployment"]["download"], "forced");
        actions::transition(&s.state.db, id, &[ActionState::Running], ActionState::Canceled, None).await.unwrap();
    }
}

async fn feedback_drives_the_action_to_finished_and_the_device_to_its_version(b: Backend) {
    let (s, dev, token, a) = one_device(b).await;
    s.exec("UPDATE devices SET attributes_ms = 1").await;
    let id = s.action(dev, a.id, ActionKind::Forced, false).await;
    let fb = format!("{}/deploymentBase/{id}/feedback", s.base("dev1"));
    // rauc-hawkbit-updater style: `id` and `time`, progress, a code; unknown fields ignored.
    let progress = json!({"id": id.to_string(), "time": "20260101T000000", "extra": true, "status": {"execution": "proceeding",
        "result": {"finished": "none", "progress": {"cnt": 2, "of": 5}}, "code": 7, "details": ["writing"]}});
    assert_eq!(post(&fb, &tt(&token), &progress).await, StatusCode::OK);
    assert_eq!(s.action_state(id).await, "running");
    for e in ["scheduled", "resumed", "download", "rejected", "canceled"] {
        assert_eq!(post(&fb, &tt(&token), &feedback(e, "none", &[])).await, StatusCode::OK, "{e}");
        assert_eq!(s.action_state(id).await, "running", "{e} keeps it running (as hawkBit)");
    }
    assert_eq!(post(&fb, &tt(&token), &feedback("downloaded", "none", &["in slot B"])).await, StatusCode::OK);
    assert_eq!(s.action_state(id).await, "downloaded");
    assert_eq!(post(&fb, &tt(&token), &feedback("closed", "success", &["committed"])).await, StatusCode::OK);
    assert_eq!(s.action_state(id).await, "finished");
    let d = otter_server::devices::by_controller_id(&s.state.db, "dev1").await.unwrap().unwrap();
    assert_eq!((d.reported_version.as_deref(), d.reported_state.as_str()), (Some("2.0"), "in-sync"));
    assert_eq!(d.attributes_ms, None, "attributes are asked for again after an install");
    // Stored, every one.
    let st = actions::statuses(&s.state.db, id, 100).await.unwrap();
    let words: Vec<&str> = st.iter().map(|x| x.execution.as_str()).collect();
    assert_eq!(
        words,
        ["proceeding", "scheduled", "resumed", "download", "rejected", "canceled", "downloaded", "closed"]
    );
    assert_eq!((st[0].code, st[0].details.clone()), (Some(7), vec!["writing".to_owned()]));
    // Audited: each state change, by the device.
    let audit = s.audit().await;
    let changes: Vec<&str> = audit.iter().filter(|e| e.0.starts_with("action.")).map(|e| e.0.as_str()).collect();
    assert_eq!(changes, ["action.downloaded", "action.finished"]);
    let fin = audit.iter().find(|e| e.0 == "action.finished").unwrap();
    assert_eq!((fin.1.as_str(), fin.2.as_str()), ("device:dev1", "device:dev1"));
    assert_eq!(fin.3["action"], id);
    assert_eq!(fin.3["artifact"]["sha256"], a.sha256.as_str());
    assert_eq!(fin.3["message"], "committed");
    // Over: 410, and nothing more is stored.
    assert_eq!(post(&fb, &tt(&token), &feedback("proceeding", "none", &[])).await, StatusCode::GONE);
    assert_eq!(actions::status_count(&s.state.db, id).await.unwrap(), 8);
}

async fn a_failure_is_an_error_with_its_message_and_download_only_ends_at_downloaded(b: Backend) {
    let (s, dev, token, a) = one_device(b).await;
    let id = s.action(dev, a.id, ActionKind::Soft, false).await;
    let fb = format!("{}/deploymentBase/{id}/feedback", s.base("dev1"));
    let r = post(&fb, &tt(&token), &feedback("closed", "failure", &["trial boot failed", "rolled back"])).await;
    assert_eq!(r, StatusCode::OK);
    let act = actions::get(&s.state.db, id).await.unwrap().unwrap();
    assert_eq!(act.state, ActionState::Error);
    assert_eq!(act.last_message.as_deref(), Some("trial boot failed; rolled back"));
    let d = otter_server::devices::by_controller_id(&s.state.db, "dev1").await.unwrap().unwrap();
    assert_eq!((d.reported_state.as_str(), d.reported_version), ("error", None));
    assert!(
        s.audit().await.iter().any(|e| e.0 == "action.error" && e.3["message"] == "trial boot failed; rolled back")
    );
    assert_eq!(post(&fb, &tt(&token), &feedback("closed", "success", &[])).await, StatusCode::GONE);

    let id = s.action(dev, a.id, ActionKind::DownloadOnly, false).await;
    let fb = format!("{}/deploymentBase/{id}/feedback", s.base("dev1"));
    assert_eq!(post(&fb, &tt(&token), &feedback("downloaded", "none", &[])).await, StatusCode::OK);
    assert_eq!(s.action_state(id).await, "finished");
    let d = otter_server::devices::by_controller_id(&s.state.db, "dev1").await.unwrap().unwrap();
    assert_eq!(d.reported_version, None, "downloaded is not installed");
}

async fn malformed_or_oversized_feedback_is_refused_and_changes_nothing(b: Backend) {
    let (s, dev, token, a) = one_device(b).await;
    let id = s.action(dev, a.id, ActionKind::Soft, false).await;
    let fb = format!("{}/deploymentBase/{id}/feedback", s.base("dev1"));
    let raw = |body: &'static str| {
        client()
            .post(&fb)
            .header("Authorization", tt(&token))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    let r = raw("{not json").await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let msg: Value = r.json().await.unwrap();
    assert!(msg["message"].as_str().unwrap().contains("malformed JSON"), "{msg}");
    for bad in [
        r#"{"status":{"execution":"exploded","result":{"finished":"none"}}}"#,
        r#"{"status":{"execution":"closed","result":{"finished":"maybe"}}}"#,
        r#"{"status":{"execution":"closed"}}"#,
        r#"{"timestamp":1}"#,
        r#"[]"#,
    ] {
        assert_eq!(raw(bad).await.unwrap().status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let huge = feedback("closed", "success", &[&"x".repeat(70 << 10)]);
    assert_eq!(post(&fb, &tt(&token), &huge).await, StatusCode::PAYLOAD_TOO_LARGE);
    let many: Vec<String> = (0..51).map(|i| format!("d{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(post(&fb, &tt(&token), &feedback("closed", "success", &many)).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(s.action_state(id).await, "running");
    assert_eq!(actions::status_count(&s.state.db, id).await.unwrap(), 0);
    // A long detail is cut at 1 KiB.
    let long = "y".repeat(3000);
    assert_eq!(post(&fb, &tt(&token), &feedback("proceeding", "none", &[&long])).await, StatusCode::OK);
    assert_eq!(actions::statuses(&s.state.db, id, 1).await.unwrap()[0].details[0].len(), 1024);
}

async fn a_full_history_takes_only_the_closing_status(b: Backend) {
    let (s, dev, token, a) = one_device(b).await;
    let id = s.action(dev, a.id, ActionKind::Soft, false).await;
    s.exec(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 999) \
         INSERT INTO action_status (action_id, at_ms, execution, finished, details) SELECT {id}, 0, 'proceeding', 'none', '[]' FROM n"
    ))
    .await;
    let fb = format!("{}/deploymentBase/{id}/feedback", s.base("dev1"));
    assert_eq!(post(&fb, &tt(&token), &feedback("proceeding", "none", &[])).await, StatusCode::OK);
    assert_eq!(post(&fb, &tt(&token), &feedback("proceeding", "none", &[])).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(post(&fb, &tt(&token), &feedback("closed", "success", &[])).await, StatusCode::OK);
    assert_eq!(s.action_state(id).await, "finished");
}

async fn config_data_merges_replaces_removes_within_hawkbits_limits(b: Backend) {
    let s = start(b, |_| {}).await;
    let (_, token) = s.device("dev1").await;
    s.exec("UPDATE devices SET compatible = NULL").await;
    let url = format!("{}/configData", s.base("dev1"));
    let put = |body: Value| {
        let (url, token) = (url.clone(), token.clone());
        async move { send(reqwest::Method::PUT, &url, &tt(&token), &body).await.0 }
    };
    let attrs = || async { otter_server::devices::by_controller_id(&s.state.db, "dev1").await.unwrap().unwrap() };
    // No mode: merge. otterd's device_type fills the compatible.
    assert_eq!(put(json!({"data": {"device_type": "gw-x", "a": "1"}})).await, StatusCode::OK);
    let d = attrs().await;
    assert_eq!(d.compatible.as_deref(), Some("gw-x"));
    assert!(d.attributes_ms.is_some());
    assert!(get(&s.base("dev1"), &tt(&token)).await.1["_links"].get("configData").is_none(), "no longer asked");
    assert_eq!(put(json!({"mode": "merge", "data": {"b": "2", "compatible": "gw-y"}})).await, StatusCode::OK);
    let d = attrs().await;
    assert_eq!(d.attributes.len(), 4);
    assert_eq!(d.compatible.as_deref(), Some("gw-x"), "a set compatible is kept");
    assert_eq!(put(json!({"mode": "remove", "data": {"a": ""}})).await, StatusCode::OK);
    assert!(!attrs().await.attributes.contains_key("a"));
    assert_eq!(put(json!({"mode": "replace", "data": {"only": "this"}})).await, StatusCode::OK);
    assert_eq!(attrs().await.attributes.keys().collect::<Vec<_>>(), ["only"]);
    // Limits, each refused with nothing changed.
    assert_eq!(put(json!({"mode": "merge", "data": {}})).await, StatusCode::BAD_REQUEST);
    assert_eq!(put(json!({"mode": "merge"})).await, StatusCode::BAD_REQUEST);
    assert_eq!(put(json!({"mode": "sideways", "data": {"a": "1"}})).await, StatusCode::BAD_REQUEST);
    let long_key: serde_json::Map<String, Value> = [("k".repeat(129), json!("v"))].into_iter().collect();
    assert_eq!(put(json!({ "data": long_key })).await, StatusCode::BAD_REQUEST);
    assert_eq!(put(json!({"data": {"k": "v".repeat(129)}})).await, StatusCode::BAD_REQUEST);
    let many: serde_json::Map<String, Value> = (0..101).map(|i| (format!("k{i}"), json!("v"))).collect();
    assert_eq!(put(json!({"data": many})).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(attrs().await.attributes.keys().collect::<Vec<_>>(), ["only"]);
}

async fn auto_confirmation_runs_the_waiting_action_and_later_ones_until_turned_off(b: Backend) {
    let (s, dev, token, a) = one_device(b).await;
    let base = format!("{}/confirmationBase", s.base("dev1"));
    let (status, c) = get(&base, &tt(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(c["autoConfirm"], json!({"active": false}));
    assert_eq!(c["_links"]["activateAutoConfirm"]["href"], format!("{base}/activateAutoConfirm"));
    let waiting = s.action(dev, a.id, ActionKind::Forced, true).await;
    assert_eq!(s.action_state(waiting).await, "wait-confirmation");

    // Turned on: the waiting action runs, with who consented in its history and the audit trail.
    let on = json!({"initiator": "installer-app", "remark": "unattended site"});
    assert_eq!(post(&format!("{base}/activateAutoConfirm"), &tt(&token), &on).await, StatusCode::OK);
    assert_eq!(s.action_state(waiting).await, "running");
    let st = actions::statuses(&s.state.db, waiting, 10).await.unwrap();
    assert_eq!(st.last().unwrap().execution, "confirmation-confirmed");
    assert!(st.last().unwrap().details[0].contains("by installer-app (unattended site)"), "{st:#?}");
    let (_, c) = get(&base, &tt(&token)).await;
    assert_eq!(
        (c["autoConfirm"]["active"].as_bool(), c["autoConfirm"]["initiator"].as_str()),
        (Some(true), Some("installer-app"))
    );
    assert!(c["autoConfirm"]["activatedAt"].as_i64().unwrap() > 0);
    assert_eq!(c["_links"]["deactivateAutoConfirm"]["href"], format!("{base}/deactivateAutoConfirm"));
    assert!(c["_links"].get("activateAutoConfirm").is_none());

    // A later action asking for consent runs at once.
    s.exec(&format!("UPDATE actions SET state = 'finished', active = 0 WHERE id = {waiting}")).await;
    let later = s.action(dev, a.id, ActionKind::Forced, true).await;
    assert_eq!(s.action_state(later).await, "running");
    let st = actions::statuses(&s.state.db, later, 10).await.unwrap();
    assert!(st[0].details[0].starts_with("confirmed automatically: auto-confirmation turned on by installer-app"));

    // Turned off (no body needed): the next one waits again.
    let r = client().post(format!("{base}/deactivateAutoConfirm")).header("Authorization", tt(&token)).send().await;
    assert_eq!(r.unwrap().status(), StatusCode::OK);
    s.exec(&format!("UPDATE actions SET state = 'finished', active = 0 WHERE id = {later}")).await;
    let third = s.action(dev, a.id, ActionKind::Forced, true).await;
    assert_eq!(s.action_state(third).await, "wait-confirmation");
    assert_eq!(get(&base, &tt(&token)).await.1["autoConfirm"], json!({"active": false}));
    let audit = s.audit().await;
    let events: Vec<&str> = audit.iter().filter(|e| e.0.starts_with("device.auto")).map(|e| e.0.as_str()).collect();
    assert_eq!(events, ["device.auto-confirm-on", "device.auto-confirm-off"]);
    // Malformed: refused, nothing changed.
    let bad = client().post(format!("{base}/activateAutoConfirm")).header("Authorization", tt(&token)).body("{").send();
    assert_eq!(bad.await.unwrap().status(), StatusCode::BAD_REQUEST);
    assert_eq!(get(&base, &tt(&token)).await.1["autoConfirm"]["active"], false);
}

async fn a_cancel_is_confirmed_or_rejected_by_the_device(b: Backend) {
    let (s, dev, token, a) = one_device(b).await;
    let id = s.action(dev, a.id, ActionKind::Soft, false).await;
    let cancel = format!("{}/cancelAction/{id}", s.base("dev1"));
    assert_eq!(get(&cancel, &tt(&token)).await.0, StatusCode::NOT_FOUND, "not being cancelled");
    assert_eq!(
        post(&format!("{cancel}/feedback"), &tt(&token), &feedback("closed", "success", &[])).await,
        StatusCode::CONFLICT
    );
    let cancel_it = || actions::transition(&s.state.db, id, &[ActionState::Running], ActionState::Canceling, None);
    cancel_it().await.unwrap();
    let (status, body) = get(&cancel, &tt(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"id": id.to_string(), "cancelAction": {"stopId": id.to_string()}}));
    // Refused (the slot is already switched): back to running, the deployment is offered again.
    assert_eq!(
        post(&format!("{cancel}/feedback"), &tt(&token), &feedback("rejected", "none", &["too late"])).await,
        StatusCode::OK
    );
    assert_eq!(s.action_state(id).await, "running");
    assert!(get(&s.base("dev1"), &tt(&token)).await.1["_links"]["deploymentBase"].is_object());
    // Accepted.
    cancel_it().await.unwrap();
    assert_eq!(
        post(&format!("{cancel}/feedback"), &tt(&token), &feedback("proceeding", "none", &[])).await,
        StatusCode::OK
    );
    assert_eq!(s.action_state(id).await, "canceling");
    assert_eq!(
        post(&format!("{cancel}/feedback"), &tt(&token), &feedback("closed", "success", &["stopped"])).await,
        StatusCode::OK
    );
    assert_eq!(s.action_state(id).await, "canceled");
    assert_eq!(
        post(&format!("{cancel}/feedback"), &tt(&token), &feedback("closed", "success", &[])).await,
        StatusCode::GONE
    );
    let st: Vec<String> =
        actions::statuses(&s.state.db, id, 10).await.unwrap().into_iter().map(|x| x.execution).collect();
    assert_eq!(st, ["cancel-rejected", "cancel-proceeding", "cancel-closed"]);
    let events: Vec<String> = s.audit().await.into_iter().map(|e| e.0).filter(|e| e.starts_with("action.")).collect();
    assert_eq!(events, ["action.running", "action.canceled"]);
}

async fn consent_is_asked_and_a_denial_keeps_the_action_waiting(b: Backend) {
    let (s, dev, token, a) = one_device(b).await;
    let id = s.action(dev, a.id, ActionKind::Forced, true).await;
    let base = s.base("dev1");
    let link = format!("{base}/confirmationBase/{id}");
    let body = get(&base, &tt(&token)).await.1;
    assert_eq!(body["_links"]["confirmationBase"]["href"], link.as_str());
    assert!(body["_links"].get("deploymentBase").is_none());
    let (status, cb) = get(&format!("{base}/confirmationBase"), &tt(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cb["autoConfirm"]["active"], false);
    assert_eq!(cb["_links"]["confirmationBase"]["href"], link.as_str());
    let (status, c) = get(&link, &tt(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(c["id"], id.to_string());
    assert_eq!(c["confirmation"]["chunks"][0]["artifacts"][0]["filename"], "update-2.0.otter");
    // Not a deployment yet: neither readable nor reportable.
    assert_eq!(get(&format!("{base}/deploymentBase/{id}"), &tt(&token)).await.0, StatusCode::NOT_FOUND);
    let fb = format!("{base}/deploymentBase/{id}/feedback");
    assert_eq!(post(&fb, &tt(&token), &feedback("proceeding", "none", &[])).await, StatusCode::NOT_FOUND);
    let answer = format!("{link}/feedback");
    assert_eq!(post(&answer, &tt(&token), &json!({"confirmation": "maybe"})).await, StatusCode::BAD_REQUEST);
    assert_eq!(
        post(&answer, &tt(&token), &json!({"confirmation": "denied", "code": 3, "details": ["user said no"]})).await,
        StatusCode::OK
    );
    assert_eq!(s.action_state(id).await, "wait-confirmation");
    assert_eq!(
        post(&answer, &tt(&token), &json!({"confirmation": "confirmed", "details": ["ok"]})).await,
        StatusCode::OK
    );
    assert_eq!(s.action_state(id).await, "running");
    assert!(get(&base, &tt(&token)).await.1["_links"]["deploymentBase"].is_object());
    assert_eq!(post(&answer, &tt(&token), &json!({"confirmation": "confirmed"})).await, StatusCode::NOT_FOUND);
    let st: Vec<String> =
        actions::statuses(&s.state.db, id, 10).await.unwrap().into_iter().map(|x| x.execution).collect();
    assert_eq!(st, ["confirmation-denied", "confirmation-confirmed"]);
    assert!(s.audit().await.iter().any(|e| e.0 == "action.running" && e.3["report"] == "confirmation-confirmed"));
}

/// A signed link to `sha256` for dev1 expiring at `expires` (seconds).
fn link(s: &Server, sha256: &str, expires: u64) -> String {
    let q = s.state.links.query(&Grant { sha256: sha256.into(), device: "dev1".into(), expires });
    format!("{}/artifacts/{sha256}/update.otter?{q}", s.url)
}

fn in_an_hour() -> u64 {
    (otter_server::db::now_ms() / 1000) as u64 + 3600
}

async fn downloads_serve_ranges_with_a_strong_etag(b: Backend) {
    let s = start(b, |_| {}).await;
    let (a, bytes) = s.publish("2.0", 2, 300 << 10).await;
    let url = link(&s, &a.sha256, in_an_hour());
    let n = bytes.len();
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["etag"].to_str().unwrap(), format!("\"{}\"", a.sha256));
    assert_eq!(h["content-length"].to_str().unwrap(), n.to_string());
    let lm = h["last-modified"].to_str().unwrap().to_owned();
    assert!(httpdate::parse_http_date(&lm).is_ok(), "{lm}");
    assert_eq!(r.bytes().await.unwrap(), bytes);
    let range = |r: &str, if_range: Option<&str>| {
        let mut q = client().get(&url).header("Range", r);
        if let Some(v) = if_range {
            q = q.header("If-Range", v);
        }
        q.send()
    };
    let r = range("bytes=1000-", None).await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"].to_str().unwrap(), format!("bytes 1000-{}/{n}", n - 1));
    assert_eq!(r.bytes().await.unwrap(), bytes[1000..]);
    let r = range("bytes=10-19", Some(&format!("\"{}\"", a.sha256))).await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap(), bytes[10..20]);
    let r = range("bytes=10-19", Some(&lm)).await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "the Last-Modified date is a validator too");
    // Another entity tag: the whole file.
    let r = range("bytes=10-19", Some("\"something-else\"")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().len(), n);
    let r = range(&format!("bytes={n}-"), None).await.unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["content-range"].to_str().unwrap(), format!("bytes */{n}"));
    // HEAD: the headers, no body.
    let r = client().head(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"].to_str().unwrap(), n.to_string());
    assert!(r.bytes().await.unwrap().is_empty());
}

async fn an_expired_edited_or_foreign_link_is_refused(b: Backend) {
    let s = start(b, |_| {}).await;
    let (a, _) = s.publish("2.0", 2, 64 << 10).await;
    let expired = link(&s, &a.sha256, 1000);
    let r = client().get(&expired).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("deploymentBase"), "{body}");
    let good = link(&s, &a.sha256, in_an_hour());
    for bad in [
        good.replace("expires=", "expires=9"),
        good.replace("device=dev1", "device=dev2"),
        good.replace("sig=", "sig=00"),
        good.split('?').next().unwrap().to_owned(),
    ] {
        assert_eq!(client().get(&bad).send().await.unwrap().status(), StatusCode::FORBIDDEN, "{bad}");
    }
    // A link for one artifact does not open another.
    let (b, _) = s.publish("3.0", 3, 64 << 10).await;
    let other = good.replace(&a.sha256, &b.sha256);
    assert_eq!(client().get(&other).send().await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(client().get(&good).send().await.unwrap().status(), StatusCode::OK);
}

/// Inserts a provisioning token; returns it.
async fn provisioning(s: &Server, remaining: i64, expires_ms: i64, tags: &[&str]) -> String {
    let token = otter_server::auth::new_secret(otter_server::auth::prefix::PROVISIONING);
    sqlx::query(
        "INSERT INTO provisioning (name, token_hash, remaining, expires_ms, tags, created_by, created_ms) \
         VALUES ('line-3', $1, $2, $3, $4, 'operator:test', 0)",
    )
    .bind(otter_server::auth::secret_hash(&token))
    .bind(remaining)
    .bind(expires_ms)
    .bind(serde_json::to_string(tags).unwrap())
    .execute(&s.state.db.pool)
    .await
    .unwrap();
    token
}

async fn enrollment_trades_a_limited_provisioning_token_for_a_target_token(b: Backend) {
    let s = start(b, |_| {}).await;
    let future = otter_server::db::now_ms() + 3_600_000;
    let p = provisioning(&s, 2, future, &["site-a", "line-3"]).await;
    let auth = format!("ProvisioningToken {p}");
    let enroll = |id: &str, body: Value| {
        let (url, auth) = (format!("{}/enroll", s.base(id)), auth.clone());
        async move { send(reqwest::Method::POST, &url, &auth, &body).await }
    };
    let remaining = || s.int("SELECT remaining FROM provisioning");
    let (status, body) = enroll("gw-a", json!({"compatible": TYPE})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["controllerId"], "gw-a");
    let token = body["targetToken"].as_str().unwrap().to_owned();
    assert!(token.starts_with("ott_"));
    assert_eq!(get(&s.base("gw-a"), &tt(&token)).await.0, StatusCode::OK);
    let d = otter_server::devices::by_controller_id(&s.state.db, "gw-a").await.unwrap().unwrap();
    assert_eq!(d.tags, ["line-3", "site-a"]);
    assert_eq!(d.compatible.as_deref(), Some(TYPE));
    assert_eq!(remaining().await, 1);
    assert!(
        s.audit()
            .await
            .iter()
            .any(|e| e.0 == "device.enrolled" && e.1 == "provisioning:line-3" && e.2 == "device:gw-a")
    );
    // The same id again: 409, the count stays.
    assert_eq!(enroll("gw-a", json!({})).await.0, StatusCode::CONFLICT);
    assert_eq!(remaining().await, 1);
    // Malformed: 400, the count stays.
    assert_eq!(enroll("gw-b", json!({"compatible": ""})).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(remaining().await, 1);
    assert_eq!(enroll("gw-b", json!({})).await.0, StatusCode::CREATED);
    assert_eq!(remaining().await, 0);
    // Used up.
    assert_eq!(enroll("gw-c", json!({})).await.0, StatusCode::FORBIDDEN);
    assert!(otter_server::devices::identity(&s.state.db, "gw-c").await.unwrap().is_none());
    // Expired, unknown, a target token instead.
    let old = provisioning(&s, 5, otter_server::db::now_ms() - 1, &[]).await;
    let url = format!("{}/enroll", s.base("gw-d"));
    assert_eq!(
        send(reqwest::Method::POST, &url, &format!("ProvisioningToken {old}"), &json!({})).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(reqwest::Method::POST, &url, "ProvisioningToken otp_nope", &json!({})).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(send(reqwest::Method::POST, &url, &tt(&token), &json!({})).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(s.int("SELECT remaining FROM provisioning WHERE remaining = 5").await, 5);
}

on_both!(
    target_tokens_are_per_device_and_a_claimed_id_is_refused_and_audited,
    the_gateway_token_acts_for_any_device_and_registers_only_with_auto_register,
    a_client_certificate_cn_counts_only_behind_a_trusted_proxy,
    a_request_records_last_seen,
    last_seen_times_are_written_in_batches_and_never_go_back,
    the_poll_gives_the_sleep_and_one_action_link,
    a_fast_release_shortens_the_sleep_while_it_runs,
    the_deployment_names_the_artifact_with_hashes_and_a_signed_link,
    a_maintenance_window_is_announced_and_a_closed_one_skips_the_update,
    feedback_drives_the_action_to_finished_and_the_device_to_its_version,
    a_failure_is_an_error_with_its_message_and_download_only_ends_at_downloaded,
    malformed_or_oversized_feedback_is_refused_and_changes_nothing,
    a_full_history_takes_only_the_closing_status,
    config_data_merges_replaces_removes_within_hawkbits_limits,
    a_cancel_is_confirmed_or_rejected_by_the_device,
    auto_confirmation_runs_the_waiting_action_and_later_ones_until_turned_off,
    consent_is_asked_and_a_denial_keeps_the_action_waiting,
    downloads_serve_ranges_with_a_strong_etag,
    an_expired_edited_or_foreign_link_is_refused,
    enrollment_trades_a_limited_provisioning_token_for_a_target_token,
);

/// Pooled connections are not pinged before use (a round trip per poll), so a connection PostgreSQL dropped must
/// cost at most one failed request, and the server must go on answering.
#[tokio::test]
async fn a_dropped_database_connection_costs_one_answer_and_is_replaced() {
    let (s, _, token, _) = one_device(Backend::Postgres).await;
    for _ in 0..4 {
        assert_eq!(get(&s.base("dev1"), &tt(&token)).await.0, StatusCode::OK);
    }
    // Every other connection of the pool is dropped by the database (a restart or an idle timeout would do this).
    let open: i64 = s.int("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()").await;
    s.exec(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .await;
    let mut failed = 0;
    let mut ok = 0;
    for _ in 0..(open + 5) {
        match get(&s.base("dev1"), &tt(&token)).await.0 {
            StatusCode::OK => ok += 1,
            StatusCode::INTERNAL_SERVER_ERROR => failed += 1,
            other => panic!("unexpected answer {other}"),
        }
    }
    assert!(failed < open, "{failed} failures for {open} connections");
    assert!(ok >= 5, "the server answers again ({ok} ok, {failed} failed)");
    assert_eq!(get(&s.base("dev1"), &tt(&token)).await.0, StatusCode::OK);
}
