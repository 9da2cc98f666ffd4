//! `otter-bench`: measures the installer against the ceilings of its own stages, on the same data.
//!
//! ```text
//! otter-bench run ARTIFACT KEY.pub SCRATCH_DIR     # everything, prints a table
//! otter-bench install SOURCE KEY.pub SLOT          # one install in this process, prints time and peak RSS
//! otter-bench footprint OTTERD OTTERCTL ARTIFACT KEY.pub WORK   # the daemon's memory through its jobs
//! otter-bench delta OLD.img NEW.img FULL_BYTES     # delta candidates for one image pair (bench/delta)
//! ```
//!
//! `run` starts `install` as child processes so each install's peak RSS is its own.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use otter_artifact::builder::{self, BuildOptions, ImageSource};
use otter_artifact::{ArtifactReader, Keyring, Policy};
use otter_installer::{CancelToken, InstallRequest, Progress, Source, Target};
use sha2::Digest as _;

mod delta;
mod footprint;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("run") if args.len() == 5 => run(Path::new(&args[2]), Path::new(&args[3]), Path::new(&args[4])),
        Some("install") if args.len() == 5 => {
            let (secs, rss) = install_once(&args[2], Path::new(&args[3]), Path::new(&args[4]))?;
            println!("{secs} {rss}");
            Ok(())
        }
        Some("footprint") if args.len() == 7 => footprint::run(&footprint::Inputs {
            otterd: args[2].clone().into(),
            otterctl: args[3].clone().into(),
            artifact: args[4].clone().into(),
            key: args[5].clone().into(),
            work: args[6].clone().into(),
        }),
        Some("delta") if args.len() == 5 => delta::run(&args[2], &args[3], args[4].parse()?),
        _ => bail!(
            "usage: otter-bench run ARTIFACT KEY.pub SCRATCH | otter-bench install SOURCE KEY.pub SLOT | \
             otter-bench footprint OTTERD OTTERCTL ARTIFACT KEY.pub WORK | otter-bench delta OLD NEW FULL_BYTES"
        ),
    }
}

/// Peak resident set of this process, in KiB (VmHWM).
fn peak_rss_kib() -> u64 {
    otter_bench::proc_kib("self", "status", "VmHWM:").unwrap_or(0)
}

fn install_once(source: &str, key: &Path, slot: &Path) -> Result<(f64, u64)> {
    let keyring = Keyring::from_file(key)?;
    let target = Target { slot_class: "rootfs".into(), path: slot.to_owned(), max_size: None, base: None };
    let mut req = InstallRequest::new(Source::parse(source), vec![target], keyring, Policy::default());
    if let Some(n) = std::env::var("OTTER_BENCH_DECODERS").ok().and_then(|v| v.parse().ok()) {
        req.decode_threads = n;
    }
    let start = Instant::now();
    let phases = std::sync::Mutex::new(Vec::new());
    let progress = |p: &Progress| {
        let mut ph = phases.lock().unwrap_or_else(|e| e.into_inner());
        if ph.last().is_none_or(|(last, _)| *last != p.phase) {
            ph.push((p.phase, start.elapsed()));
        }
    };
    otter_installer::install(&req, &progress, &CancelToken::new())?;
    if std::env::var_os("OTTER_BENCH_PHASES").is_some() {
        eprintln!("{:?}", phases.lock().unwrap_or_else(|e| e.into_inner()));
    }
    Ok((start.elapsed().as_secs_f64(), peak_rss_kib()))
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

/// Serves one file over HTTP/1.1 on loopback, to as many requests as come.
fn serve(path: PathBuf) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/artifact.otter", listener.local_addr()?);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let path = path.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut req = [0u8; 4096];
                let _ = conn.read(&mut req)?;
                let mut f = File::open(&path)?;
                let len = f.metadata()?.len();
                write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")?;
                std::io::copy(&mut f, &mut conn)?;
                Ok(())
            });
        }
    });
    Ok(url)
}

fn child_install(source: &str, key: &Path, slot: &Path) -> Result<(f64, u64)> {
    let _ = std::fs::remove_file(slot);
    let out = Command::new(std::env::current_exe()?)
        .args(["install", source])
        .arg(key)
        .arg(slot)
        .output()
        .context("running the install child")?;
    if !out.status.success() {
        bail!("install failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    let mut it = text.split_whitespace();
    Ok((it.next().context("no time")?.parse()?, it.next().context("no rss")?.parse()?))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// "(min-max MB/s)" of a set of runs.
fn spread(size: u64, runs: &[f64]) -> String {
    let fastest = runs.iter().copied().fold(f64::INFINITY, f64::min);
    let slowest = runs.iter().copied().fold(0.0, f64::max);
    format!("({:.0}-{:.0})", mbps(size, slowest), mbps(size, fastest))
}

fn best_of<T>(n: usize, mut f: impl FnMut() -> Result<(f64, T)>) -> Result<(f64, T)> {
    let mut best: Option<(f64, T)> = None;
    for _ in 0..n {
        let r = f()?;
        if best.as_ref().is_none_or(|b| r.0 < b.0) {
            best = Some(r);
        }
    }
    best.context("no runs")
}

fn run(artifact: &Path, key: &Path, scratch: &Path) -> Result<()> {
    std::fs::create_dir_all(scratch)?;
    let keyring = Keyring::from_file(key)?;

    // Load the stored chunks into memory once, so the stage ceilings measure only their own work.
    let mut reader = ArtifactReader::open(File::open(artifact)?, &keyring, &Policy::default())?;
    let manifest = reader.manifest().clone();
    let payload = manifest.payloads.first().context("no payload")?.clone();
    let mut stored = Vec::new();
    loop {
        let mut buf = Vec::new();
        if reader.read_stored_chunk(&mut buf)?.is_none() {
            break;
        }
        stored.push(buf);
    }
    let size = payload.size;
    let artifact_len = std::fs::metadata(artifact)?.len();
    println!(
        "artifact: {} ({} MiB image, {} MiB stored, {} chunks of {} KiB)",
        artifact.display(),
        size >> 20,
        artifact_len >> 20,
        payload.chunks.len(),
        payload.chunk_size >> 10
    );

    // Stage 1: zstd decoding alone, one thread (what one core can do).
    let mut image = vec![0u8; size as usize];
    let (decode_s, ()) = best_of(2, || {
        let mut d = zstd::bulk::Decompressor::new()?;
        let start = Instant::now();
        for (i, s) in stored.iter().enumerate() {
            let off = payload.chunk_offset(i) as usize;
            let len = payload.chunk_len(i) as usize;
            d.decompress_to_buffer(s, &mut image[off..off + len])?;
        }
        Ok((start.elapsed().as_secs_f64(), ()))
    })?;

    // Stage 2: SHA-256 alone, of what the installer hashes: the stored chunks when the manifest signs them (format
    // 1.1, checked before decoding), else the decoded chunks.
    let hashes_stored = payload.chunks.iter().all(|c| c.stored_sha256.is_some());
    let (hash_s, ()) = best_of(2, || {
        let start = Instant::now();
        for (i, s) in stored.iter().enumerate() {
            let data = match hashes_stored {
                true => &s[..],
                false => &image[payload.chunk_offset(i) as usize..][..payload.chunk_len(i) as usize],
            };
            std::hint::black_box(sha2::Sha256::digest(data));
        }
        Ok((start.elapsed().as_secs_f64(), ()))
    })?;

    // Stage 3: sequential write alone: aligned 4 MiB direct writes, then fsync, into a fresh file. Measured in
    // rounds alternating with the installs below, so both see the same (shared, noisy) disk.
    let write_target = scratch.join("write-ceiling.img");
    let write_once = || -> Result<f64> {
        let _ = std::fs::remove_file(&write_target);
        let mut buf = otter_installer::slot::AlignedBuf::new(4 << 20);
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&write_target)
            .or_else(|_| OpenOptions::new().write(true).create(true).truncate(true).open(&write_target))?;
        let start = Instant::now();
        let mut w = &f;
        for piece in image.chunks(4 << 20) {
            let len = piece.len().next_multiple_of(4096);
            let b = buf.resize(len);
            b[..piece.len()].copy_from_slice(piece);
            w.write_all(b)?;
        }
        f.sync_all()?;
        let secs = start.elapsed().as_secs_f64();
        let _ = std::fs::remove_file(&write_target);
        Ok(secs)
    };

    // The installer itself, from a file and from loopback HTTP, each in its own process, alternating with the
    // write ceiling.
    let slot = scratch.join("slot.img");
    let url = serve(artifact.to_owned())?;
    let rounds: usize = std::env::var("OTTER_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let (mut write_runs, mut file_runs, mut http_runs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        write_runs.push(write_once()?);
        file_runs.push(child_install(&artifact.to_string_lossy(), key, &slot)?);
        http_runs.push(child_install(&url, key, &slot)?);
    }
    let _ = std::fs::remove_file(&slot);
    drop(image);
    drop(stored);
    // The pipeline without a device: into RAM (tmpfs), where only CPU work remains.
    let ram_slot = Path::new("/dev/shm").join(format!("otter-bench-{}.img", std::process::id()));
    let ram = best_of(2, || child_install(&artifact.to_string_lossy(), key, &ram_slot)).ok();
    let _ = std::fs::remove_file(&ram_slot);

    // Fixed overhead: a tiny artifact (one 4 KiB chunk), installed in-process many times.
    let tiny_dir = tempfile::tempdir_in(scratch)?;
    let tiny_img = tiny_dir.path().join("tiny.img");
    std::fs::write(&tiny_img, vec![0x5au8; 4096])?;
    let sk = otter_artifact::keys::generate()?;
    let mut opts = BuildOptions::new(vec!["bench".into()], "tiny");
    opts.chunk_size = 4096;
    let tiny = tiny_dir.path().join("tiny.otter");
    let src = ImageSource { name: "rootfs".into(), slot_class: "rootfs".into(), path: tiny_img, base: None };
    builder::create(&opts, &[src], std::slice::from_ref(&sk), File::create(&tiny)?)?;
    let mut tiny_ring = Keyring::new();
    tiny_ring.add(sk.verifying_key());
    let tiny_slot = tiny_dir.path().join("slot.img");
    let target = Target { slot_class: "rootfs".into(), path: tiny_slot, max_size: None, base: None };
    let req = InstallRequest::new(Source::File(tiny.clone()), vec![target], tiny_ring, Policy::default());
    let tiny_rounds = 50;
    let mut times = Vec::new();
    for _ in 0..tiny_rounds {
        let start = Instant::now();
        otter_installer::install(&req, &|_: &Progress| {}, &CancelToken::new())?;
        times.push(start.elapsed());
    }
    times.sort();
    let overhead: Duration = times[tiny_rounds / 2];

    let write_s = median(write_runs.clone());
    let hash_label = if hashes_stored { "sha256 (stored chunks)" } else { "sha256 (decoded chunks)" };
    let stages = [("zstd decode (1 thread)", decode_s), (hash_label, hash_s), ("sequential write + fsync", write_s)];
    let (slowest_name, slowest_s) = stages.iter().copied().fold(("", 0.0), |acc, s| if s.1 > acc.1 { s } else { acc });
    println!();
    println!("figures in MB/s of installed image; disk runs: median of {rounds} alternating rounds (min-max)");
    println!("{:<34} {:>9} {:>10}", "stage (same data)", "MB/s", "seconds");
    for (name, s) in stages {
        let spread = match name == "sequential write + fsync" {
            true => spread(size, &write_runs),
            false => String::new(),
        };
        println!("{name:<34} {:>9.0} {s:>10.2}   {spread}", mbps(size, s));
    }
    for (name, runs) in [("install from file", &file_runs), ("install from loopback HTTP", &http_runs)] {
        let s = median(runs.iter().map(|r| r.0).collect());
        let rss = runs.iter().map(|r| r.1).max().unwrap_or(0);
        println!(
            "{name:<34} {:>9.0} {s:>10.2}   {}   {:.0}% of the slowest stage ({slowest_name}), peak RSS {:.1} MiB",
            mbps(size, s),
            spread(size, &runs.iter().map(|r| r.0).collect::<Vec<_>>()),
            slowest_s / s * 100.0,
            rss as f64 / 1024.0
        );
    }
    if let Some((s, rss)) = ram {
        println!(
            "{:<34} {:>9.0} {s:>10.2}   {:.0}% of the decode stage (no device: the pipeline's CPU work alone), \
             peak RSS {:.1} MiB",
            "install from file into RAM (tmpfs)",
            mbps(size, s),
            decode_s / s * 100.0,
            rss as f64 / 1024.0
        );
    }
    println!(
        "fixed per-install overhead (4 KiB artifact, median of {tiny_rounds}): {:.2} ms",
        overhead.as_secs_f64() * 1e3
    );
    Ok(())
}
