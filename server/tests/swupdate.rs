//! Another vendor's DDI client against otter-server: SWUpdate's suricatta (hawkBit mode, Debian's `swupdate`)
//! polls, is offered a deployment, downloads the artifact through the signed link, and reports back. SWUpdate
//! cannot install an otter artifact (it wants a signed `.swu`), so the action must end `error` with SWUpdate's own
//! failure message — which proves the whole DDI conversation: poll, deploymentBase, download, feedback.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use otter_server::auth::Role;
use otter_server::config::Config;
use otter_server::model::{ActionKind, ActionState};
use otter_server::{AppState, actions, api, devices};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tool(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swupdate_suricatta_speaks_ddi_with_otter_server() {
    assert!(tool("swupdate") && tool("openssl"), "swupdate and openssl are needed: run tests/install-deps");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let key = otter_artifact::keys::generate().unwrap();
    otter_artifact::keys::write_keypair(&key, &dir.join("rel")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = Config::new(dir.join("data"), dir.join("rel.pub"));
    config.public_url = format!("http://{addr}");
    config.poll = Duration::from_secs(1);
    let state = AppState::open(config).await.unwrap();
    tokio::spawn(otter_server::serve(state.clone(), listener, std::future::pending()));

    // An artifact, a device and a forced deployment, as an operator would set them up.
    let img = dir.join("img");
    std::fs::write(&img, vec![3u8; 100_000]).unwrap();
    let mut o = otter_artifact::builder::BuildOptions::new(vec!["gw".into()], "7.0");
    o.level = 1;
    let src = otter_artifact::builder::ImageSource {
        name: "rootfs".into(),
        slot_class: "rootfs".into(),
        path: img,
        base: None,
    };
    let mut bytes = Vec::new();
    otter_artifact::builder::create(&o, &[src], std::slice::from_ref(&key), &mut bytes).unwrap();
    let (_, admin) = api::issue_api_token(&state.db, "root", Role::Admin, "test").await.unwrap();
    otter_common::http::init_tls();
    let http = reqwest::Client::new();
    let a: serde_json::Value = http
        .post(format!("http://{addr}/api/v1/artifacts?filename=gw-7.0.otter"))
        .bearer_auth(&admin)
        .body(bytes)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (device, token) = devices::register(&state.db, "swu-1", Some("gw"), &[], true, "test").await.unwrap();
    let token = token.unwrap();
    let action = actions::create(&state.db, device.id, a["id"].as_i64().unwrap(), ActionKind::Forced, None, false)
        .await
        .unwrap();

    // SWUpdate is built to accept signed images only: it wants a certificate even though it will never get that far.
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=test", "-days", "2"])
        .arg("-keyout")
        .arg(dir.join("k.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let cfg = dir.join("swupdate.cfg");
    std::fs::write(&cfg, "globals: { verbose = true; loglevel = 6; };\n").unwrap();
    let suricatta = format!("-t DEFAULT -u http://{addr} -i swu-1 -k {token} -p 1");
    let log = std::fs::File::create(dir.join("swupdate.log")).unwrap();
    // TMPDIR keeps its IPC sockets apart from any other SWUpdate on the machine.
    let _swupdate = Kill(
        Command::new("swupdate")
            .arg("-f")
            .arg(&cfg)
            .arg("-k")
            .arg(dir.join("cert.pem"))
            .args(["-v", "-u", &suricatta])
            .env("TMPDIR", dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    let start = Instant::now();
    let done = loop {
        let a = actions::get(&state.db, action).await.unwrap().unwrap();
        if a.state.is_terminal() {
            break a;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "action still {:?}; SWUpdate said:\n{}",
            a.state,
            std::fs::read_to_string(dir.join("swupdate.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let log = std::fs::read_to_string(dir.join("swupdate.log")).unwrap_or_default();
    assert_eq!(done.state, ActionState::Error, "SWUpdate cannot install an otter artifact; log:\n{log}");
    let statuses = actions::statuses(&state.db, action, 100).await.unwrap();
    assert!(statuses.iter().any(|s| s.execution == "closed" && s.finished == "failure"), "{statuses:?}");
    let seen = devices::by_controller_id(&state.db, "swu-1").await.unwrap().unwrap();
    assert!(seen.last_seen_ms.is_some());
    // It fetched the artifact through the signed link (that is what it tried to install).
    assert!(log.contains("gw-7.0.otter") || log.contains("/artifacts/"), "no download in SWUpdate's log:\n{log}");
}
