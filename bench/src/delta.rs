//! `otter-bench delta OLD NEW FULL_BYTES`: what a delta update of NEW over OLD would download with otter's
//! candidate layouts, computed from the two images without building artifacts (issue 14, `bench/delta`).
//!
//! Every layout cuts blocks **inside each 4 MiB chunk** (a block never spans a chunk boundary, because the chunk's
//! signed hash is checked before the chunk is written). A block of NEW is free when its SHA-256 is among OLD's blocks
//! cut the same way, or already counted once in NEW; every other block is downloaded as its own zstd level-19 frame.
//! Figures are fractions of `FULL_BYTES`, the size of the real full otter artifact of NEW.
//!
//! Environment: `OTTER_DELTA_THREADS` (default 2) compression threads; `OTTER_DELTA_STRIDE` (default 1): compress
//! the missing blocks of every Nth chunk only and scale by the missing raw bytes (1 = exact);
//! `OTTER_DELTA_GROWTH_STRIDE` (default 8): every Nth chunk is compressed whole, per block and per block with a
//! dictionary for the growth figures (0 = skip); `OTTER_DELTA_WINDOW_STRIDE` (default 8, 0 = skip): every Nth chunk that
//! differs from OLD's at the same offset is patched against a window of OLD for the static-delta estimate;
//! `OTTER_DELTA_WINDOW_LEVEL` (default 12): the zstd level of those patches (level 19 indexes the whole reference
//! with its binary-tree match finder: minutes per chunk on two shared cores); `OTTER_DELTA_ONLY_REUSE` (set): only
//! the 4 KiB reuse figures.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sha2::{Digest as _, Sha256};
use zstd::zstd_safe::{self, CParameter, DParameter};

/// The artifact's chunk: 4 MiB.
const CHUNK: usize = 4 << 20;
/// zstd level of the artifact (today's chunks) and of every block frame.
const LEVEL: i32 = 19;
/// Size of a trained dictionary: 112 KiB (zstd's own default for `--train`).
const DICT_SIZE: usize = 112 << 10;
/// Bytes of one block's entry in a binary index: SHA-256 (32), decoded length (u32), stored length (u32); the
/// offsets are running sums.
const INDEX_ENTRY: u64 = 40;
/// RAUC-style reuse: the missing 4 KiB blocks are sent as runs of at most 64 KiB, one zstd frame per run.
const RUN_MAX: usize = 64 << 10;

/// How a 4 MiB chunk is cut into blocks.
#[derive(Clone, Copy, Debug)]
pub enum Layout {
    /// Blocks of a fixed size in bytes (the chunk's last block may be shorter).
    Fixed(usize),
    /// FastCDC-style content-defined blocks of this average size; min = avg/4, max = avg*4.
    Cdc(usize),
}

impl Layout {
    fn name(self) -> String {
        match self {
            Layout::Fixed(n) => format!("fixed {} KiB", n >> 10),
            Layout::Cdc(n) => format!("CDC avg {} KiB", n >> 10),
        }
    }

    /// The block lengths of one chunk, in order; they sum to `data.len()`.
    pub fn cut(self, data: &[u8]) -> Vec<usize> {
        match self {
            Layout::Fixed(n) => data.chunks(n).map(<[u8]>::len).collect(),
            Layout::Cdc(avg) => {
                let cdc = Cdc::new(avg);
                let mut out = Vec::with_capacity(data.len() / avg + 1);
                let mut rest = data;
                while !rest.is_empty() {
                    let n = cdc.cut(rest);
                    out.push(n);
                    rest = &rest[n..];
                }
                out
            }
        }
    }
}

/// FastCDC (Xia et al., USENIX ATC 2016): gear rolling hash, normalized chunking at level 2 (a harder mask below
/// the average size, an easier one above), the first `min` bytes of a block skipped.
struct Cdc {
    min: usize,
    avg: usize,
    max: usize,
    mask_small: u64,
    mask_large: u64,
}

/// The gear table: 256 pseudo-random 64-bit values (splitmix64 from a fixed seed, so cuts are reproducible).
static GEAR: std::sync::LazyLock<[u64; 256]> = std::sync::LazyLock::new(|| {
    let mut s: u64 = 0x6f74_7465_7221_4344;
    std::array::from_fn(|_| {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
});

impl Cdc {
    fn new(avg: usize) -> Self {
        let bits = avg.trailing_zeros();
        // Top bits of the hash: the gear hash shifts left, so they depend on the last 64 bytes.
        let top = |n: u32| ((1u64 << n) - 1) << (64 - n);
        Cdc { min: avg / 4, avg, max: avg * 4, mask_small: top(bits + 2), mask_large: top(bits - 2) }
    }

    /// Length of the first block of `data`.
    fn cut(&self, data: &[u8]) -> usize {
        let gear = &*GEAR;
        if data.len() <= self.min {
            return data.len();
        }
        let end = data.len().min(self.max);
        let normal = self.avg.min(end);
        let mut fp = 0u64;
        let mut i = self.min;
        while i < normal {
            fp = (fp << 1).wrapping_add(gear[data[i] as usize]);
            if fp & self.mask_small == 0 {
                return i + 1;
            }
            i += 1;
        }
        while i < end {
            fp = (fp << 1).wrapping_add(gear[data[i] as usize]);
            if fp & self.mask_large == 0 {
                return i + 1;
            }
            i += 1;
        }
        end
    }
}

/// The blocks of an image: (offset, length, SHA-256), in image order, cut inside each chunk.
fn blocks(image: &[u8], layout: Layout) -> Vec<(usize, usize, [u8; 32])> {
    let mut out = Vec::new();
    for (c, chunk) in image.chunks(CHUNK).enumerate() {
        let mut off = c * CHUNK;
        for len in layout.cut(chunk) {
            out.push((off, len, Sha256::digest(&image[off..off + len]).into()));
            off += len;
        }
    }
    out
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs `f` over `items` on `threads` threads and sums what it returns.
fn par_sum<T: Sync>(items: &[T], threads: usize, f: impl Fn(&T) -> u64 + Sync) -> u64 {
    let next = AtomicUsize::new(0);
    let total = Mutex::new(0u64);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut sum = 0;
                while let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) {
                    sum += f(item);
                }
                *total.lock().unwrap_or_else(|e| e.into_inner()) += sum;
            });
        }
    });
    total.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// Size of `data` as one zstd level-19 frame.
fn zsize(data: &[u8]) -> u64 {
    zstd::bulk::compress(data, LEVEL).map_or(data.len() as u64, |v| v.len() as u64)
}

fn pct(part: f64, whole: f64) -> String {
    format!("{:.2} %", 100.0 * part / whole)
}

/// `otter-bench delta OLD NEW FULL_BYTES`: prints the candidates' table for one pair.
pub fn run(old_path: &str, new_path: &str, full: u64) -> Result<()> {
    let old = std::fs::read(old_path).with_context(|| format!("reading {old_path}"))?;
    let new = std::fs::read(new_path).with_context(|| format!("reading {new_path}"))?;
    if old.len() != new.len() {
        bail!("{old_path} and {new_path} differ in size");
    }
    let threads = env_usize("OTTER_DELTA_THREADS", 2);
    let stride = env_usize("OTTER_DELTA_STRIDE", 1).max(1);
    let gstride = env_usize("OTTER_DELTA_GROWTH_STRIDE", 8);
    let wstride = env_usize("OTTER_DELTA_WINDOW_STRIDE", 8);
    let wlevel = i32::try_from(env_usize("OTTER_DELTA_WINDOW_LEVEL", 12)).unwrap_or(12);
    let fullf = full as f64;
    if std::env::var_os("OTTER_DELTA_ONLY_REUSE").is_some() {
        reuse_4k(&old, &new, threads, stride, fullf);
        return Ok(());
    }
    println!(
        "otter candidates: download = NEW's blocks whose SHA-256 is not among OLD's (same cutting), each one zstd-19 \
         frame{}; + index = the same plus NEW's binary block index ({INDEX_ENTRY} B/block)",
        if stride > 1 { format!(", estimated from every {stride}th chunk") } else { String::new() }
    );
    println!();
    println!("| layout | blocks | missing raw | download | fraction | + index | index / full | scan MB/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let layouts = [
        Layout::Fixed(16 << 10),
        Layout::Fixed(64 << 10),
        Layout::Fixed(256 << 10),
        Layout::Cdc(16 << 10),
        Layout::Cdc(32 << 10),
        Layout::Cdc(64 << 10),
    ];
    let mut growth_rows = Vec::new();
    for layout in layouts {
        let t = Instant::now();
        let old_index: HashSet<[u8; 32]> = blocks(&old, layout).into_iter().map(|b| b.2).collect();
        let scan = old.len() as f64 / t.elapsed().as_secs_f64() / 1e6;
        let new_blocks = blocks(&new, layout);
        let mut seen = HashSet::new();
        let missing: Vec<(usize, usize)> =
            new_blocks.iter().filter(|b| !old_index.contains(&b.2) && seen.insert(b.2)).map(|b| (b.0, b.1)).collect();
        let raw: u64 = missing.iter().map(|b| b.1 as u64).sum();
        let sampled: Vec<(usize, usize)> =
            missing.iter().copied().filter(|b| (b.0 / CHUNK).is_multiple_of(stride)).collect();
        let sampled_raw: u64 = sampled.iter().map(|b| b.1 as u64).sum();
        let z = par_sum(&sampled, threads, |&(off, len)| zsize(&new[off..off + len]));
        let download = if sampled_raw == 0 { 0.0 } else { z as f64 * raw as f64 / sampled_raw as f64 };
        let index = new_blocks.len() as u64 * INDEX_ENTRY;
        println!(
            "| {} | {} | {:.1} MiB | {:.2} MiB | {:.3} | {:.3} | {} | {:.0} |",
            layout.name(),
            new_blocks.len(),
            raw as f64 / 1048576.0,
            download / 1048576.0,
            download / fullf,
            (download + index as f64) / fullf,
            pct(index as f64, fullf),
            scan
        );
        growth_rows.push((layout, index));
    }
    reuse_4k(&old, &new, threads, stride, fullf);
    if gstride > 0 {
        growth(&new, &growth_rows, threads, gstride, fullf)?;
    }
    if wstride > 0 {
        windowed(&old, &new, wstride, wlevel, fullf)?;
    }
    Ok(())
}

/// RAUC's block-hash-index: 4 KiB blocks of NEW found anywhere in OLD by hash are free; the others are sent in runs
/// of consecutive missing blocks of at most 64 KiB, each run one zstd-19 frame.
fn reuse_4k(old: &[u8], new: &[u8], threads: usize, stride: usize, full: f64) {
    let t = Instant::now();
    let index: HashSet<[u8; 32]> = old.chunks(4096).map(|b| Sha256::digest(b).into()).collect();
    let scan = old.len() as f64 / t.elapsed().as_secs_f64() / 1e6;
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut seen = HashSet::new();
    for (i, b) in new.chunks(4096).enumerate() {
        let h: [u8; 32] = Sha256::digest(b).into();
        if index.contains(&h) || !seen.insert(h) {
            continue;
        }
        let off = i * 4096;
        match runs.last_mut() {
            Some(r) if r.0 + r.1 == off && r.1 + b.len() <= RUN_MAX && off % CHUNK != 0 => r.1 += b.len(),
            _ => runs.push((off, b.len())),
        }
    }
    let raw: u64 = runs.iter().map(|r| r.1 as u64).sum();
    let sampled: Vec<(usize, usize)> = runs.iter().copied().filter(|r| (r.0 / CHUNK).is_multiple_of(stride)).collect();
    let sampled_raw: u64 = sampled.iter().map(|r| r.1 as u64).sum();
    let z = par_sum(&sampled, threads, |&(off, len)| zsize(&new[off..off + len]));
    let download = if sampled_raw == 0 { 0.0 } else { z as f64 * raw as f64 / sampled_raw as f64 };
    println!();
    println!(
        "baseline, RAUC-style 4 KiB block reuse (missing blocks as zstd-19 frames of runs <= 64 KiB): missing raw \
         {:.1} MiB, download {:.2} MiB = {:.3} of full; index scan {scan:.0} MB/s",
        raw as f64 / 1048576.0,
        download / 1048576.0,
        download / full
    );
    // otter variant: the index keeps a hash per 4 KiB block, but the artifact stores frames of F bytes (so the
    // full artifact does not carry one frame per 4 KiB); a frame is downloaded whole when any of its 4 KiB blocks
    // is neither in OLD nor earlier in NEW.
    for frame in [16usize << 10, 64 << 10] {
        let mut seen = HashSet::new();
        let mut fetch: Vec<(usize, usize)> = Vec::new();
        let mut frames = 0u64;
        for (c, chunk) in new.chunks(CHUNK).enumerate() {
            for (f, bytes) in chunk.chunks(frame).enumerate() {
                frames += 1;
                let mut need = false;
                for b in bytes.chunks(4096) {
                    let h: [u8; 32] = Sha256::digest(b).into();
                    if !index.contains(&h) && seen.insert(h) {
                        need = true;
                    }
                }
                if need {
                    fetch.push((c * CHUNK + f * frame, bytes.len()));
                }
            }
        }
        let raw: u64 = fetch.iter().map(|r| r.1 as u64).sum();
        let sampled: Vec<(usize, usize)> =
            fetch.iter().copied().filter(|r| (r.0 / CHUNK).is_multiple_of(stride)).collect();
        let sampled_raw: u64 = sampled.iter().map(|r| r.1 as u64).sum();
        let z = par_sum(&sampled, threads, |&(off, len)| zsize(&new[off..off + len]));
        let download = if sampled_raw == 0 { 0.0 } else { z as f64 * raw as f64 / sampled_raw as f64 };
        // Index: 8 bytes of SHA-256 per 4 KiB block (a lookup key only: the assembled chunk is checked against its
        // signed SHA-256) plus the frame's stored length (u32).
        let index_bytes = (new.len() as u64 / 4096) * 8 + frames * 4;
        println!(
            "otter variant, 4 KiB hashes + {} KiB frames: fetched raw {:.1} MiB, download {:.2} MiB = {:.3} of full \
             (+ index {:.3}; index {} = {} of full)",
            frame >> 10,
            raw as f64 / 1048576.0,
            download / 1048576.0,
            download / full,
            (download + index_bytes as f64) / full,
            index_bytes,
            pct(index_bytes as f64, full)
        );
    }
}

/// Growth of the full artifact when every block is its own frame, with and without a trained dictionary, measured
/// on every `gstride`th chunk against today's one frame per chunk.
fn growth(new: &[u8], rows: &[(Layout, u64)], threads: usize, gstride: usize, full: f64) -> Result<()> {
    let sample: Vec<&[u8]> = new.chunks(CHUNK).step_by(gstride).collect();
    let today = par_sum(&sample, threads, |c| zsize(c));
    println!();
    println!(
        "growth of the full artifact against one zstd-19 frame per 4 MiB chunk, measured on every {gstride}th chunk \
         ({} chunks, {:.1} MiB stored today); dictionary: {} KiB trained per layout on the blocks of those chunks \
         (zstd::dict::from_continuous), its size counted once; index = the binary block index",
        sample.len(),
        today as f64 / 1048576.0,
        DICT_SIZE >> 10
    );
    println!();
    println!("| layout | frames per block | + index | dictionary | dict + index | <= 3 %? |");
    println!("|---|---:|---:|---:|---:|---|");
    for &(layout, index) in rows {
        let blocks: Vec<&[u8]> = sample
            .iter()
            .flat_map(|c| {
                let mut off = 0;
                layout.cut(c).into_iter().map(move |len| {
                    off += len;
                    &c[off - len..off]
                })
            })
            .collect();
        let per_block = par_sum(&blocks, threads, |b| zsize(b));
        // Train on the non-zero blocks (at most 32 MiB of them): zero blocks teach a dictionary nothing.
        let mut data = Vec::new();
        let mut sizes = Vec::new();
        for b in blocks.iter().filter(|b| b.iter().any(|&x| x != 0)) {
            if data.len() + b.len() > 32 << 20 {
                break;
            }
            data.extend_from_slice(b);
            sizes.push(b.len());
        }
        let dict = zstd::dict::from_continuous(&data, &sizes, DICT_SIZE).context("training a dictionary")?;
        let edict = zstd::dict::EncoderDictionary::copy(&dict, LEVEL);
        let with_dict = par_sum(&blocks, threads, |b| {
            zstd::bulk::Compressor::with_prepared_dictionary(&edict)
                .and_then(|mut c| c.compress(b))
                .map_or(b.len() as u64, |v| v.len() as u64)
        });
        let g = per_block as f64 / today as f64 - 1.0;
        let gd = with_dict as f64 / today as f64 - 1.0 + dict.len() as f64 / full;
        let ix = index as f64 / full;
        let ok = |x: f64| if x <= 0.03 { "yes" } else { "no" };
        println!(
            "| {} | {:+.2} % | {:+.2} % | {:+.2} % | {:+.2} % | {} / with dict {} |",
            layout.name(),
            100.0 * g,
            100.0 * (g + ix),
            100.0 * gd,
            100.0 * (gd + ix),
            ok(g + ix),
            ok(gd + ix)
        );
    }
    Ok(())
}

/// Static delta: each 4 MiB target chunk a zstd patch (at `level`) against OLD's bytes within +-W around the same offset
/// (`--patch-from` with a bounded reference). Chunks identical to OLD's at the same offset cost nothing (a copy);
/// of the others every `wstride`th is patched and the total scaled by the number of differing chunks.
fn windowed(old: &[u8], new: &[u8], wstride: usize, level: i32, full: f64) -> Result<()> {
    let differing: Vec<usize> = (0..new.len().div_ceil(CHUNK))
        .filter(|&c| {
            let r = c * CHUNK..((c + 1) * CHUNK).min(new.len());
            old[r.clone()] != new[r]
        })
        .collect();
    let sample: Vec<usize> = differing.iter().copied().step_by(wstride).collect();
    println!();
    println!(
        "static delta, windowed: per 4 MiB target chunk a zstd-{level} patch against OLD +-W MiB around the same offset; \
         {} of {} chunks differ from OLD's at the same offset, every {wstride}th of them patched ({} chunks) and \
         scaled; decode = single-thread CPU per chunk on this machine; memory = reference + chunk + output",
        differing.len(),
        new.len().div_ceil(CHUNK),
        sample.len()
    );
    println!();
    println!("| window | patch bytes (est.) | fraction | encode s/chunk | decode ms/chunk | device memory |");
    println!("|---|---:|---:|---:|---:|---:|");
    for w in [16usize << 20, 32 << 20, 64 << 20] {
        let mut total = 0u64;
        let mut enc = 0.0;
        let mut dec = 0.0;
        let mut mem = 0;
        for &c in &sample {
            let start = c * CHUNK;
            let end = ((c + 1) * CHUNK).min(new.len());
            let reference = &old[start.saturating_sub(w)..(end + w).min(old.len())];
            let target = &new[start..end];
            let wlog = ((reference.len() + target.len()).next_power_of_two().trailing_zeros()).max(10);
            mem = mem.max(reference.len() + 2 * target.len());
            let t = Instant::now();
            let mut cctx = zstd_safe::CCtx::create();
            let e = |r: zstd_safe::SafeResult| r.map_err(|c| anyhow::anyhow!("zstd: {}", zstd_safe::get_error_name(c)));
            e(cctx.set_parameter(CParameter::CompressionLevel(level)))?;
            e(cctx.set_parameter(CParameter::WindowLog(wlog)))?;
            e(cctx.ref_prefix(reference))?;
            let mut patch = Vec::with_capacity(zstd_safe::compress_bound(target.len()));
            e(cctx.compress2(&mut patch, target))?;
            enc += t.elapsed().as_secs_f64();
            total += patch.len() as u64;
            let t = Instant::now();
            let mut dctx = zstd_safe::DCtx::create();
            e(dctx.set_parameter(DParameter::WindowLogMax(wlog)))?;
            e(dctx.ref_prefix(reference))?;
            let mut out = Vec::with_capacity(target.len());
            e(dctx.decompress(&mut out, &patch))?;
            dec += t.elapsed().as_secs_f64();
            if out != target {
                bail!("windowed patch of chunk {c} does not decode to the target");
            }
        }
        let n = sample.len().max(1) as f64;
        let est = total as f64 * differing.len() as f64 / n;
        println!(
            "| +-{} MiB | {:.2} MiB | {:.3} | {:.1} | {:.0} | {:.0} MiB |",
            w >> 20,
            est / 1048576.0,
            est / full,
            enc / n,
            1000.0 * dec / n,
            mem as f64 / 1048576.0
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdc_cuts_cover_the_chunk_within_bounds() {
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let cuts = Layout::Cdc(16 << 10).cut(&data);
        assert_eq!(cuts.iter().sum::<usize>(), data.len());
        assert!(cuts[..cuts.len() - 1].iter().all(|&n| (4 << 10..=64 << 10).contains(&n)));
        let avg = data.len() / cuts.len();
        assert!((8 << 10..=32 << 10).contains(&avg), "average {avg}");
    }

    #[test]
    fn cdc_resynchronises_after_an_insertion() {
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let mut shifted = vec![7u8; 100];
        shifted.extend_from_slice(&data);
        let hashes =
            |d: &[u8]| -> HashSet<[u8; 32]> { blocks(d, Layout::Cdc(16 << 10)).into_iter().map(|b| b.2).collect() };
        let (a, b) = (hashes(&data), hashes(&shifted));
        assert!(a.intersection(&b).count() * 10 >= a.len() * 8, "most blocks survive a 100-byte shift");
    }
}
