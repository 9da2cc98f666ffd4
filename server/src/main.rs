//! `otter-server`: see the library docs; `main` only parses arguments and prints the error chain.

fn main() {
    println!("{}", otter_server::config::ddi_sleep(std::time::Duration::from_secs(1)));
}
