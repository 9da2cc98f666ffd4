//! Putting host programs into the guest: building a workspace binary and copying it, with the
//! shared libraries it loads, into an overlay directory for [`crate::ImageBuilder::overlay`].
//!
//! The guest's root filesystem has a static busybox and no libc; a dynamically linked program
//! (otterd) needs its glibc libraries and the dynamic loader at the paths the host has them, which
//! is where [`install_with_libraries`] puts them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tools::{self, run};
use crate::{Error, repo_root};

/// Environment variables Cargo sets for a running test that a nested `cargo build` must not see:
/// some build scripts (ring's) track `CARGO_PKG_NAME`, so the nested build would otherwise rebuild
/// them for this package and the next ordinary build rebuild them back.
fn is_cargo_test_var(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_MANIFEST_")
        || matches!(
            name,
            "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
                | "OUT_DIR"
        )
}

/// Builds `bin` of workspace package `package` with `cargo build --release --locked` (the
/// shipping profile) and returns the executable's path, as Cargo reports it. Fast when it is up to
/// date; works from inside `cargo test` (Cargo does not hold its build lock while tests run).
pub fn build_release_binary(package: &str, bin: &str) -> Result<PathBuf, Error> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--locked",
        "--message-format=json-render-diagnostics",
        "-p",
        package,
        "--bin",
        bin,
    ])
    .current_dir(repo_root());
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_cargo_test_var) {
            cmd.env_remove(&name);
        }
    }
    let out = run(&mut cmd)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // {"reason":"compiler-artifact","target":{"name":"otterd","kind":["bin"],...},"executable":"/..."}
    stdout
        .lines()
        .filter(|l| l.contains("\"compiler-artifact\"") && l.contains(&format!("\"name\":\"{bin}\"")))
        .find_map(|l| {
            let start = l.find("\"executable\":\"")? + "\"executable\":\"".len();
            let end = start + l[start..].find('"')?;
            Some(PathBuf::from(&l[start..end]))
        })
        .filter(|p| p.is_file())
        .ok_or_else(|| Error::Command {
            command: format!("cargo build --release -p {package} --bin {bin}"),
            status: "succeeded".to_owned(),
            stderr: format!("Cargo reported no executable for {bin}"),
        })
}

/// The shared libraries `binary` loads and its dynamic loader, as absolute host paths (`ldd`).
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, Error> {
    let out = run(tools::command("ldd", "libc-bin")?.arg(binary))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)";
    // the vDSO has no file.
    let libs: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| {
            let path = l.split("=>").nth(1).unwrap_or(l).split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    if libs.is_empty() {
        return Err(Error::BadImage { path: binary.to_owned(), reason: "ldd found no libraries".to_owned() });
    }
    Ok(libs)
}

/// Copies `binary` to `overlay/<dest>` (mode 0755) and each of its shared libraries to the same
/// path under `overlay` as on the host (symbolic links resolved: the guest gets the files).
pub fn install_with_libraries(binary: &Path, overlay: &Path, dest: &str) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let copy = |from: &Path, to: &Path| -> Result<(), Error> {
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        }
        fs::copy(from, to).map_err(|e| Error::io("copy", from, e))?;
        Ok(())
    };
    let target = overlay.join(dest.trim_start_matches('/'));
    copy(binary, &target)?;
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).map_err(|e| Error::io("chmod", &target, e))?;
    for lib in shared_libraries(binary)? {
        copy(&lib, &overlay.join(lib.strip_prefix("/").unwrap_or(&lib)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_libraries_of_a_host_program() {
        let sh = tools::find("sh").unwrap();
        let sh = fs::canonicalize(sh).unwrap();
        let libs = shared_libraries(&sh).unwrap();
        assert!(libs.iter().any(|l| l.to_string_lossy().contains("libc.so")), "{libs:?}");
        assert!(libs.iter().all(|l| l.is_absolute()));
    }

    #[test]
    fn nested_builds_drop_the_test_variables() {
        assert!(is_cargo_test_var("CARGO_PKG_NAME"));
        assert!(is_cargo_test_var("CARGO_MANIFEST_DIR"));
        assert!(!is_cargo_test_var("CARGO_TARGET_DIR"));
        assert!(!is_cargo_test_var("CARGO_HOME"));
    }
}
