//! A third DDI client against otter-server: RAUC's Python hawkBit client (PyPI `rauc-hawkbit`, the DDI layer of
//! RAUC's `RaucDBUSDDIClient`), driven by `tests/clients/rauc_hawkbit_client.py` through the conversation that
//! client has — poll, `configData`, `deploymentBase`, the download with its MD5 check, progress and closing
//! feedback in the client's own documents (`progress: {"percentage": 50}`, `time` as `YYYYmmddTHHMMSS`). RAUC's
//! compiled rauc-hawkbit-updater is not packaged for Debian 12 nor on a registry this machine reaches; this client
//! is RAUC's own reading of the DDI documents.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Backend, start};
use otter_server::model::{ActionKind, ActionState};
use otter_server::{actions, devices};
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raucs_python_hawkbit_client_downloads_and_reports_through_otter_server() {
    let pydeps = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/pydeps");
    assert!(
        pydeps.join("rauc_hawkbit").is_dir(),
        "RAUC's hawkBit client is needed in {}: run tests/install-deps",
        pydeps.display()
    );
    let s = start(Backend::Sqlite, |c| c.poll = std::time::Duration::from_secs(1)).await;
    let (device, token) = s.device("rauc-1").await;
    let (artifact, bytes) = s.publish("3.0", 4, 200_000).await;
    let action = s.action(device, artifact.id, ActionKind::Forced, false).await;

    let download = s.dir.path().join("bundle.raucb");
    let host = s.url.trim_start_matches("http://").to_owned();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/rauc_hawkbit_client.py");
    let out = tokio::task::spawn_blocking({
        let download = download.clone();
        move || {
            Command::new("/usr/bin/python3")
                .arg(script)
                .args([host.as_str(), "rauc-1", token.as_str()])
                .arg(&download)
                .env("PYTHONPATH", &pydeps)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "RAUC's client failed:\n{said}\n{stderr}");

    // Asked for its attributes and offered the deployment in one poll, it sends the attributes first.
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines[0], "poll configData deploymentBase 00:00:01", "{said}");
    assert_eq!(lines[1], "configData sent", "{said}");
    assert!(lines.contains(&"downloaded update-3.0.otter md5 ok"), "{said}");
    // The file it downloaded is the artifact, byte for byte.
    let got = std::fs::read(&download).unwrap();
    assert_eq!(hex::encode(Sha256::digest(&got)), artifact.sha256);
    assert_eq!(got, bytes);
    // Its feedback drove the action to the end, with its messages kept.
    let a = actions::get(&s.state.db, action).await.unwrap().unwrap();
    assert_eq!(a.state, ActionState::Finished);
    let st = actions::statuses(&s.state.db, action, 100).await.unwrap();
    assert!(st.iter().any(|x| x.execution == "proceeding" && x.details == ["Installing"]), "{st:#?}");
    let last = st.last().unwrap();
    assert_eq!((last.execution.as_str(), last.finished.as_str()), ("closed", "success"));
    assert_eq!(last.details, ["Rauc bundle update completed with result: 0"]);
    let d = devices::by_controller_id(&s.state.db, "rauc-1").await.unwrap().unwrap();
    assert_eq!(d.attributes.get("client").map(String::as_str), Some("rauc-hawkbit"));
    assert_eq!(d.reported_version.as_deref(), Some("3.0"));
}
