//! `otter-ddi-server [PORT-IGNORED] ARTIFACT...`: runs the test server with one target `dev1` (no auth) and one
//! forced action per artifact given, printing the URL and every request it receives. For manual experiments.

use otter_ddi_server::{ActionSpec, DdiServer};

fn main() -> std::io::Result<()> {
    let server = DdiServer::start()?;
    server.add_target("dev1", None);
    for path in std::env::args().skip(1) {
        let name = std::path::Path::new(&path).file_name().map_or(path.clone(), |n| n.to_string_lossy().into_owned());
        server.add_artifact(&name, std::fs::read(&path)?);
        let id = server.create_action("dev1", ActionSpec::new(&name, "1.0"));
        println!("action {id}: {name}");
    }
    println!("listening on {} (tenant {}, target dev1)", server.url(), server.tenant());
    let mut seen = 0;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let requests = server.requests();
        for r in &requests[seen..] {
            println!("{} {}{}{} -> {}", r.method, r.path, if r.query.is_empty() { "" } else { "?" }, r.query, r.status);
        }
        seen = requests.len();
    }
}
