//! `otter-artifact`: builds, signs, verifies, inspects and installs otter artifacts.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use otter_artifact::builder::{self, BuildOptions, DeltaBase, ImageSource};
use otter_artifact::keys::{self, KeyId};
use otter_artifact::manifest::{self, Compression};
use otter_artifact::{ArtifactError, ArtifactReader, Keyring, Limits, Manifest, Policy};
use otter_common::durable::Replacement;
use otter_installer::{CancelToken, HttpOptions, InstallError, InstallRequest, Phase, Progress, Source, Target};

#[derive(Parser)]
#[command(name = "otter-artifact", version, about = "Build, sign, verify, inspect and install otter artifacts")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an ed25519 key pair: PATH/NAME.key (mode 0600) and PATH/NAME.pub.
    Keygen {
        /// PATH/NAME of the key pair to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Create a signed artifact from one or more images.
    Create(CreateArgs),
    /// Add a signature to an artifact (for key rotation or multi-party signing), after checking every hash its
    /// manifest lists against the payloads.
    Sign {
        /// Secret key file.
        #[arg(long)]
        key: PathBuf,
        /// Input artifact.
        input: PathBuf,
        /// Output artifact.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
    /// Verify an artifact completely, exactly as a device installs it: signature, manifest, every payload byte.
    Verify {
        #[command(flatten)]
        trust: TrustArgs,
        /// The base image of the delta payloads of slot class CLASS, as CLASS=FILE (repeatable): the image the
        /// devices run, e.g. the decoded payload of the artifact the delta was made from.
        #[arg(long, value_name = "CLASS=FILE", value_parser = parse_named_path)]
        base: Vec<(String, PathBuf)>,
        /// Artifact file, or `-` for stdin.
        file: String,
    },
    /// Show an artifact's manifest (signatures are listed, not verified).
    Inspect {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Artifact file, or `-` for stdin.
        file: String,
    },
    /// Install an artifact's slot image into a slot device or file.
    Install(InstallArgs),
    /// Make a delta artifact: NEW's images as patches against OLD's, for devices that run OLD. Both are verified
    /// completely first; the delta is signed like `create` and carries NEW's manifest fields.
    Delta(DeltaArgs),
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct TrustArgs {
    /// A trusted public key file.
    #[arg(long, value_name = "PUB", visible_alias = "trust-key")]
    key: Option<PathBuf>,
    /// A directory of trusted `*.pub` key files.
    #[arg(long)]
    keyring: Option<PathBuf>,
}

impl TrustArgs {
    fn load(&self) -> Result<Keyring> {
        Ok(match (&self.key, &self.keyring) {
            (Some(k), _) => Keyring::from_file(k)?,
            (_, Some(d)) => Keyring::from_dir(d)?,
            _ => bail!("give --key or --keyring"),
        })
    }
}

#[derive(Args)]
struct CreateArgs {
    /// Secret key to sign with (repeat to sign with several keys).
    #[arg(long, required = true)]
    key: Vec<PathBuf>,
    /// Device type the artifact is for (repeatable).
    #[arg(long, required = true)]
    compatible: Vec<String>,
    /// Display version.
    #[arg(long)]
    version: String,
    /// Anti-rollback counter: devices refuse artifacts below the highest they installed.
    #[arg(long, default_value_t = 0)]
    security_version: u64,
    /// Image to include as NAME=FILE; NAME is also the slot class (e.g. rootfs=rootfs.ext4).
    #[arg(long, required = true, value_parser = parse_named_path)]
    image: Vec<(String, PathBuf)>,
    /// Output artifact.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// zstd compression level (1-22).
    #[arg(long, default_value_t = builder::DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
    level: i32,
    /// Chunk size in KiB (a multiple of 4, 4 KiB to 16 MiB).
    #[arg(long, default_value_t = manifest::DEFAULT_CHUNK_SIZE / 1024)]
    chunk_size_kib: u64,
    /// Store chunks uncompressed.
    #[arg(long)]
    no_compress: bool,
    /// Compression threads (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Free-form description.
    #[arg(long)]
    description: Option<String>,
    /// Creation time in seconds since the epoch (default: now; set it for reproducible artifacts).
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    created: Option<u64>,
}

/// Parses `NAME=FILE` (`--image`, `--base`).
fn parse_named_path(s: &str) -> Result<(String, PathBuf), String> {
    let (name, file) = s.split_once('=').ok_or("expected NAME=FILE")?;
    if name.is_empty() || file.is_empty() {
        return Err("expected NAME=FILE".into());
    }
    Ok((name.to_owned(), PathBuf::from(file)))
}

#[derive(Args)]
// The signing key is `--key`, as for `create`; the trusted public key that OLD and NEW must verify against is
// TrustArgs' `--key` under its other name.
#[command(mut_arg("key", |a| a.long("trust-key").alias(None).help("A trusted public key file, for OLD and NEW")))]
struct DeltaArgs {
    /// The full artifact the devices run.
    #[arg(long, value_name = "OLD.otter")]
    from: PathBuf,
    /// The full artifact to update them to.
    #[arg(long, value_name = "NEW.otter")]
    to: PathBuf,
    /// Output artifact.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// Secret key to sign the delta with (repeat to sign with several keys).
    #[arg(long = "key", value_name = "SECRET", required = true)]
    signing_key: Vec<PathBuf>,
    #[command(flatten)]
    trust: TrustArgs,
    /// MiB of OLD's image on each side of a chunk's offset that its patch may refer to: a device holds about twice
    /// this plus one chunk of its running slot while it decodes (capped at 40 MiB in all).
    #[arg(long, default_value_t = builder::DEFAULT_DELTA_WINDOW >> 20,
          value_parser = clap::value_parser!(u64).range(0..=64))]
    window_mib: u64,
    /// zstd compression level (1-22).
    #[arg(long, default_value_t = builder::DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
    level: i32,
    /// Compression threads (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Args)]
struct InstallArgs {
    #[command(flatten)]
    trust: TrustArgs,
    /// Artifact file, `-` for stdin, or an http(s):// URL.
    source: String,
    /// The slot (block device or file) to install the rootfs image into.
    #[arg(long)]
    slot: PathBuf,
    /// Size of the slot in bytes, for file-backed slots (a block device's own size always applies).
    #[arg(long)]
    slot_size: Option<u64>,
    /// Slot class of --slot.
    #[arg(long, default_value = "rootfs")]
    slot_class: String,
    /// This device's type; the artifact must be compatible with it.
    #[arg(long)]
    device_type: Option<String>,
    /// Refuse artifacts with a lower security_version.
    #[arg(long, default_value_t = 0)]
    min_security_version: u64,
    /// PEM CA bundle to trust for https (instead of the system roots).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// PEM file with a client certificate and key for mutual TLS.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Extra HTTP header, "Name: value" (repeatable).
    #[arg(long)]
    header: Vec<String>,
    /// Do not rewrite chunks the slot already holds.
    #[arg(long)]
    skip_identical: bool,
    /// Keep a resume record here while installing: if the install is interrupted (power cut, kill, lost
    /// connection), running it again with the same record continues after the chunks already written.
    #[arg(long)]
    resume_file: Option<PathBuf>,
    /// Largest zstd window accepted, in MiB.
    #[arg(long, default_value_t = 8)]
    max_window_mib: u64,
    /// The running slot of --slot-class (block device or image file, only read): the base a delta artifact's
    /// payload is patched against. It must hold the image the delta was made from, and cannot be --slot.
    #[arg(long)]
    base: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otter-artifact: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn open_input(file: &str) -> Result<Box<dyn Read>> {
    Ok(if file == "-" {
        Box::new(io::stdin().lock())
    } else {
        Box::new(io::BufReader::with_capacity(
            1 << 20,
            File::open(file).with_context(|| format!("cannot open {file}"))?,
        ))
    })
}

/// Writes `OUT` through [`otter_common::durable::Replacement`]: a temp file with a random name created
/// exclusively next to `OUT` (a link or file planted there is never written through), fsynced and renamed over
/// `OUT`, so a failure never leaves a half-written artifact and `OUT` keeps its mode.
fn write_atomically<T>(out: &Path, f: impl FnOnce(&mut io::BufWriter<Replacement>) -> Result<T>) -> Result<T> {
    let replacement = Replacement::create(out)?;
    let mut w = io::BufWriter::with_capacity(1 << 20, replacement);
    let t = f(&mut w)?;
    // Dropped on an error above, the replacement removes its temp file and leaves `OUT` alone.
    let replacement =
        w.into_inner().map_err(|e| e.into_error()).with_context(|| format!("cannot write {}", out.display()))?;
    replacement.commit()?;
    Ok(t)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen { out } => {
            let key = keys::generate()?;
            keys::write_keypair(&key, &out)?;
            println!("{}.key {}.pub key id {}", out.display(), out.display(), KeyId::of(&key.verifying_key()));
        }
        Command::Create(a) => create(a)?,
        Command::Sign { key, input, output } => {
            let key = keys::read_signing_key(&key)?;
            let input = open_input(&input.to_string_lossy())?;
            let m = write_atomically(&output, |w| Ok(builder::add_signature(input, &key, w)?))?;
            println!("signed {} {} with key {}", output.display(), m.version, KeyId::of(&key.verifying_key()));
        }
        Command::Verify { trust, base, file } => {
            let keyring = trust.load()?;
            let mut r = ArtifactReader::open(open_input(&file)?, &keyring, &verify_policy())?;
            for (class, path) in &base {
                let payloads: Vec<usize> = (0..r.manifest().payloads.len())
                    .filter(|&i| r.manifest().payloads[i].slot_class == *class)
                    .collect();
                if payloads.is_empty() {
                    bail!("--base {class}={}: {file} has no payload of slot class {class:?}", path.display());
                }
                for i in payloads {
                    r.set_base(i, File::open(path).with_context(|| format!("cannot open base {}", path.display()))?);
                }
            }
            r.verify_all().map_err(|e| with_base_hint(e, r.manifest(), |class| format!("--base {class}=IMAGE")))?;
            let m = r.manifest();
            println!(
                "{file}: valid, version {} for {}, signed by {}, {} payload(s), manifest sha256 {}",
                m.version,
                m.compatible.join(","),
                r.signed_by(),
                m.payloads.len(),
                r.manifest_digest()
            );
        }
        Command::Inspect { json, file } => inspect(json, &file)?,
        Command::Install(a) => install(a)?,
        Command::Delta(a) => delta(a)?,
    }
    Ok(())
}

/// What `verify` and `delta` check artifacts against: everything but a device's own policy.
fn verify_policy() -> Policy {
    Policy { device_type: None, min_security_version: 0, limits: Limits::default() }
}

/// `e`, and if it is [`ArtifactError::DeltaNeedsBase`], which option gives the payload its base.
fn with_base_hint(e: ArtifactError, m: &Manifest, option: impl Fn(&str) -> String) -> anyhow::Error {
    match &e {
        ArtifactError::DeltaNeedsBase { payload } => {
            let class = m.payloads.iter().find(|p| p.name == *payload).map_or("CLASS", |p| p.slot_class.as_str());
            anyhow!("{e}; pass it with {}", option(class))
        }
        _ => e.into(),
    }
}

fn create(a: CreateArgs) -> Result<()> {
    let keys = a.key.iter().map(|k| keys::read_signing_key(k)).collect::<Result<Vec<_>, _>>()?;
    let mut opts = BuildOptions::new(a.compatible, a.version);
    opts.security_version = a.security_version;
    opts.level = a.level;
    opts.chunk_size = a.chunk_size_kib * 1024;
    opts.threads = a.threads;
    opts.description = a.description;
    if a.no_compress {
        opts.compression = Compression::None;
    }
    if let Some(t) = a.created {
        opts.created = t;
    }
    let images: Vec<ImageSource> = a
        .image
        .into_iter()
        .map(|(name, path)| ImageSource { slot_class: name.clone(), name, path, base: None })
        .collect();
    let start = Instant::now();
    let m = write_atomically(&a.output, |w| Ok(builder::create(&opts, &images, &keys, w)?))?;
    let stored: u64 = m.payloads.iter().map(|p| p.stored_size).sum();
    let size: u64 = m.payloads.iter().map(|p| p.size).sum();
    println!(
        "created {}: version {}, {} payload(s), {size} bytes stored as {stored} ({:.1}%) in {:.1}s",
        a.output.display(),
        m.version,
        m.payloads.len(),
        stored as f64 * 100.0 / size.max(1) as f64,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn inspect(json: bool, file: &str) -> Result<()> {
    let (m, sigs) = builder::read_unverified(open_input(file)?)?;
    let key_ids: Vec<String> = sigs.signatures.iter().map(|(id, _)| id.to_string()).collect();
    if json {
        let v = serde_json::json!({ "manifest": m, "signatures": key_ids, "verified": false });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("version:          {}", m.version);
    println!("format:           {}", m.format_version);
    println!("compatible:       {}", m.compatible.join(", "));
    println!("security_version: {}", m.security_version);
    println!("created:          {}", m.created_rfc3339());
    if let Some(d) = &m.description {
        println!("description:      {d}");
    }
    println!("signatures:       {} (not verified; use `verify`)", key_ids.join(", "));
    for p in &m.payloads {
        println!(
            "payload {}: {} -> slot class {}, {} bytes, {:?}, stored {} bytes, {} chunks of {} KiB, sha256 {}",
            p.name,
            p.file,
            p.slot_class,
            p.size,
            p.compression,
            p.stored_size,
            p.chunks.len(),
            p.chunk_size / 1024,
            p.sha256
        );
        if let Some(base) = &p.base {
            let patched = p.chunks.iter().filter(|c| c.reference.is_some()).count();
            let largest = (0..p.chunks.len()).filter_map(|i| p.reference_range(i)).map(|r| r.end - r.start).max();
            println!(
                "  kind {}: base of {} bytes in chunks of {} KiB, sha256 {}; {patched} of {} chunks patched, largest \
                 reference {:.1} MiB",
                p.kind,
                base.size,
                base.chunk_size / 1024,
                base.sha256,
                p.chunks.len(),
                largest.unwrap_or(0) as f64 / (1 << 20) as f64
            );
        }
    }
    Ok(())
}

/// An artifact verified completely (signature, manifest, every chunk), its payloads decoded into anonymous
/// temporary files.
struct Decoded {
    manifest: Manifest,
    images: Vec<File>,
}

/// Verifies `reader` to its end, writing each payload's decoded image into a temporary file of its own.
fn decode_all<R: Read>(mut reader: ArtifactReader<R>) -> Result<Decoded> {
    let mut images =
        reader.manifest().payloads.iter().map(|_| tempfile::tempfile()).collect::<io::Result<Vec<File>>>()?;
    let mut out = Vec::new();
    while let Some(at) = reader.next_chunk(&mut out)? {
        images[at.payload].write_all(&out).context("writing a decoded image to a temporary file")?;
    }
    Ok(Decoded { manifest: reader.manifest().clone(), images })
}

/// A path that opens `file` again, which has none: the builder reads its images by path.
fn path_of(file: &File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

fn delta(a: DeltaArgs) -> Result<()> {
    let keyring = a.trust.load()?;
    let keys = a.signing_key.iter().map(|k| keys::read_signing_key(k)).collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    let open = |path: &Path, what: &str| -> Result<ArtifactReader<Box<dyn Read>>> {
        let r = ArtifactReader::open(open_input(&path.to_string_lossy())?, &keyring, &verify_policy())
            .with_context(|| format!("{what} {}", path.display()))?;
        if let Some(p) = r.manifest().payloads.iter().find(|p| p.is_delta()) {
            bail!("{what} {}: payload {:?} is a delta; deltas are made between full artifacts", path.display(), p.name);
        }
        Ok(r)
    };
    let (old, new) = (open(&a.from, "OLD")?, open(&a.to, "NEW")?);
    let classes = |m: &Manifest| m.payloads.iter().map(|p| p.slot_class.as_str()).collect::<Vec<_>>().join(", ");
    if !new.manifest().payloads.iter().any(|n| old.manifest().payloads.iter().any(|o| o.slot_class == n.slot_class)) {
        bail!(
            "OLD and NEW share no slot class (OLD has {}, NEW has {})",
            classes(old.manifest()),
            classes(new.manifest())
        );
    }
    let old = decode_all(old).with_context(|| format!("OLD {}", a.from.display()))?;
    let new = decode_all(new).with_context(|| format!("NEW {}", a.to.display()))?;
    let decoded = start.elapsed();

    let m = &new.manifest;
    let mut opts = BuildOptions::new(m.compatible.clone(), m.version.clone());
    opts.security_version = m.security_version;
    opts.created = m.created;
    opts.description = m.description.clone();
    opts.chunk_size = m.payloads[0].chunk_size;
    opts.compression = Compression::Zstd;
    opts.level = a.level;
    opts.threads = a.threads;
    // The OLD payload of each NEW payload's slot class, if any.
    let bases: Vec<Option<usize>> =
        m.payloads.iter().map(|n| old.manifest.payloads.iter().position(|o| o.slot_class == n.slot_class)).collect();
    let images: Vec<ImageSource> = m
        .payloads
        .iter()
        .zip(&new.images)
        .zip(&bases)
        .map(|((p, image), base)| ImageSource {
            name: p.name.clone(),
            slot_class: p.slot_class.clone(),
            path: path_of(image),
            base: base.map(|o| DeltaBase { path: path_of(&old.images[o]), window: a.window_mib << 20 }),
        })
        .collect();
    let building = Instant::now();
    let d = write_atomically(&a.output, |w| {
        let d = builder::create(&opts, &images, &keys, w)?;
        // The images went through temporary files: check that they are NEW's and OLD's before signing for them.
        for ((p, n), base) in d.payloads.iter().zip(&m.payloads).zip(&bases) {
            let old_sha = base.map(|o| old.manifest.payloads[o].sha256);
            if p.sha256 != n.sha256 || p.base.as_ref().map(|b| b.sha256) != old_sha {
                bail!("payload {:?}: the decoded images do not match the manifests' sha256", p.name);
            }
        }
        Ok(d)
    })?;
    let built = building.elapsed();
    for ((p, n), base) in d.payloads.iter().zip(&m.payloads).zip(&bases) {
        let patched = p.chunks.iter().filter(|c| c.reference.is_some()).count();
        let against = match base {
            Some(o) => format!("delta against OLD's {:?}", old.manifest.payloads[*o].name),
            None => format!("full (OLD has no slot class {:?})", p.slot_class),
        };
        println!(
            "{}: {against}, {} bytes stored, NEW stores {} bytes: {:.3} of it; {patched} chunks patched, {} plain; \
             built in {:.1}s",
            p.name,
            p.stored_size,
            n.stored_size,
            p.stored_size as f64 / n.stored_size.max(1) as f64,
            p.chunks.len() - patched,
            built.as_secs_f64()
        );
    }
    println!(
        "created {}: version {}, {} payload(s), format {}; verified and decoded OLD and NEW in {:.1}s",
        a.output.display(),
        d.version,
        d.payloads.len(),
        d.format_version,
        decoded.as_secs_f64()
    );
    Ok(())
}

fn install(a: InstallArgs) -> Result<()> {
    let keyring = a.trust.load()?;
    let mut http = HttpOptions { ca_bundle: a.ca, client_identity: a.cert, ..HttpOptions::default() };
    for h in &a.header {
        let (k, v) = h.split_once(':').with_context(|| format!("header {h:?} is not \"Name: value\""))?;
        http.headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let policy = Policy {
        device_type: a.device_type,
        min_security_version: a.min_security_version,
        limits: Limits { max_window: a.max_window_mib << 20, ..Limits::default() },
    };
    let mut req = InstallRequest::new(
        Source::parse(&a.source),
        vec![Target { slot_class: a.slot_class, path: a.slot.clone(), max_size: a.slot_size, base: a.base }],
        keyring,
        policy,
    );
    req.http = http;
    req.skip_identical = a.skip_identical;
    req.resume_file = a.resume_file;
    let tty = io::stderr().is_terminal();
    let last = std::sync::Mutex::new(Instant::now());
    let progress = |p: &Progress| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if p.phase == Phase::Writing && last.elapsed().as_millis() < 500 {
            return;
        }
        *last = Instant::now();
        let line = format!(
            "{:?}: {}% ({} of {} MiB written, {} MiB read)",
            p.phase,
            p.percent(),
            p.bytes_written >> 20,
            p.total >> 20,
            p.bytes_read >> 20
        );
        // Without a terminal (logs, CI), only the writing progress is worth a line.
        if !tty && !matches!(p.phase, Phase::Writing | Phase::Done) {
            return;
        }
        if tty {
            eprint!("\r\x1b[K{line}");
            if p.phase == Phase::Done {
                eprintln!();
            }
        } else {
            eprintln!("{line}");
        }
    };
    let report = otter_installer::install(&req, &progress, &CancelToken::new())
        .map_err(|e| match e {
            InstallError::Artifact(e @ ArtifactError::DeltaNeedsBase { .. }) => {
                anyhow!("{e}; pass it with --base (the running slot of class {})", req.targets[0].slot_class)
            }
            e => e.into(),
        })
        .with_context(|| format!("install into {} failed", a.slot.display()))?;
    let secs = report.elapsed.as_secs_f64();
    println!(
        "installed {} into {}: {} bytes written, {} bytes received, {} chunks skipped, {} chunks resumed, {:.2}s \
         ({:.0} MB/s), signed by {}",
        report.manifest.version,
        a.slot.display(),
        report.bytes_written,
        report.bytes_received,
        report.chunks_skipped,
        report.chunks_resumed,
        secs,
        report.bytes_written as f64 / secs.max(1e-9) / 1e6,
        report.signed_by
    );
    if let Some(e) = &report.checkpoint_error {
        eprintln!("otter-artifact: warning: resume record not kept: {e}");
    }
    io::stdout().flush()?;
    Ok(())
}
