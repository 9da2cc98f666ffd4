//! The `otter-server` binary as an operator and a build pipeline use it: the first admin token, `serve`, the client
//! commands, and `audit-verify` catching an edited log.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_otter-server");

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN).args(args).envs(env.iter().copied()).stdin(Stdio::null()).output().unwrap()
}

fn ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run(args, env);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn artifact(dir: &Path, key: &ed25519_dalek::SigningKey) -> std::path::PathBuf {
    let img = dir.join("img");
    std::fs::write(&img, vec![7u8; 200_000]).unwrap();
    let mut o = otter_artifact::builder::BuildOptions::new(vec!["gw".into()], "5.0");
    o.chunk_size = 64 << 10;
    o.level = 1;
    let src = otter_artifact::builder::ImageSource {
        name: "rootfs".into(),
        slot_class: "rootfs".into(),
        path: img,
        base: None,
    };
    let out = dir.join("gw-5.0.otter");
    otter_artifact::builder::create(&o, &[src], std::slice::from_ref(key), std::fs::File::create(&out).unwrap())
        .unwrap();
    out
}

#[test]
fn a_pipeline_publishes_and_an_auditor_finds_an_edit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let data_s = data.to_str().unwrap();
    let key = otter_artifact::keys::generate().unwrap();
    otter_artifact::keys::write_keypair(&key, &dir.join("rel")).unwrap();

    // The first admin token, made on the server host.
    let admin = ok(&["token", "--data", data_s, "--name", "ci", "--role", "admin"], &[]).trim().to_owned();
    assert!(admin.starts_with("otk_"));
    let out = run(&["token", "--data", data_s, "--name", "x", "--role", "root"], &[]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("viewer, operator, approver or admin")
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let keyring = dir.join("rel.pub");
    let _server = Serve(
        Command::new(BIN)
            .args(["serve", "--data", data_s, "--keyring", keyring.to_str().unwrap(), "--listen", &listen])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://{listen}");
    let env = [("OTTER_SERVER_URL", url.as_str()), ("OTTER_SERVER_TOKEN", admin.as_str())];
    let start = Instant::now();
    while run(&["devices"], &env).status.code() != Some(0) {
        assert!(start.elapsed() < Duration::from_secs(30), "server did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }

    let file = artifact(dir, &key);
    let published: serde_json::Value = serde_json::from_str(&ok(&["publish", file.to_str().unwrap()], &env)).unwrap();
    assert_eq!((published["version"].as_str(), published["filename"].as_str()), (Some("5.0"), Some("gw-5.0.otter")));
    // A wrong token is refused with the server's message and a failing exit status.
    let out =
        run(&["publish", file.to_str().unwrap()], &[("OTTER_SERVER_URL", &url), ("OTTER_SERVER_TOKEN", "otk_wrong")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown or revoked API token"));
    let csv = ok(&["compliance", "--csv"], &env);
    assert!(csv.starts_with("controller_id,"));

    // The audit log is intact, then an entry is edited behind the server's back.
    let report: serde_json::Value = serde_json::from_str(&ok(&["audit-verify", "--data", data_s], &[])).unwrap();
    assert_eq!(report["entries"], 2, "{report}");
    let head = report["head"].as_str().unwrap().to_owned();
    ok(&["audit-verify", "--data", data_s, "--expect-head", &head], &[]);
    let out = run(&["audit-verify", "--data", data_s, "--expect-head", &"0".repeat(64)], &[]);
    assert_eq!(out.status.code(), Some(3), "a head the chain does not hold");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let db = otter_server::db::Db::open_existing(&format!("sqlite://{}", data.join("otter.db").display()))
            .await
            .unwrap();
        sqlx::query("UPDATE audit SET detail = '{}' WHERE seq = 2").execute(&db.pool).await.unwrap();
    });
    let out = run(&["audit-verify", "--data", data_s], &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("entry 2 does not match its hash"));
    // A data directory with no database is an error, not an empty (and so "intact") log.
    let out = run(&["audit-verify", "--data", dir.join("nothing").to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
}
