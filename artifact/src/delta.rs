//! The device side of delta payloads (format 1.2, `docs/artifact-format.md` section 9): the base regions their
//! chunks are patched against, read from the running slot and checked against the signed base before zstd sees a
//! byte of them.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::error::ArtifactError;
use crate::manifest::{Digest, Payload};

/// Alignment of direct reads, in bytes (covers 512-byte and 4 KiB logical blocks).
const ALIGN: usize = 4096;

/// The reference regions of one delta payload, read from its base (the running slot) as the chunks come in order.
///
/// Holds one contiguous region (zstd's reference prefix must be), at most [`crate::manifest::MAX_REFERENCE`]
/// bytes: moving to the next chunk keeps the base chunks both regions share and reads only the new ones, so each
/// base chunk is read and checked against its signed digest about once per install.
///
/// Reads bypass the page cache when the caller gives a descriptor opened with `O_DIRECT`: a mounted root file
/// system's block device can show, through the cache, bytes the disk does not hold (ext4 loads its journal's
/// superblock into the device's cache and changes it there, even when mounted read-only), and the delta was made
/// from what the disk holds.
pub struct BaseWindow {
    buffered: File,
    direct: Option<File>,
    /// Index of the first base chunk held.
    first: u64,
    /// Number of base chunks held, each checked.
    count: u64,
    buf: Vec<u8>,
    /// Where the held region starts in `buf`: the first 4 KiB boundary.
    at: usize,
    /// Bytes held.
    len: usize,
}

impl BaseWindow {
    /// A window over the base image (a slot device or an image file), read-only: through `direct` (the same file
    /// opened with `O_DIRECT`) where the kernel allows it, through `buffered` otherwise.
    pub fn new(buffered: File, direct: Option<File>) -> Self {
        Self { buffered, direct, first: 0, count: 0, buf: Vec::new(), at: 0, len: 0 }
    }

    /// Room for `bytes` plus alignment; a larger buffer replaces the current one (and forgets what it held).
    fn reserve(&mut self, bytes: usize) {
        if self.buf.len() < bytes + 2 * ALIGN {
            // Zeroed allocations this size are fresh pages: only what is read into them becomes resident.
            self.buf = vec![0; bytes + 2 * ALIGN];
            self.at = self.buf.as_ptr().align_offset(ALIGN).min(ALIGN);
            (self.first, self.count, self.len) = (0, 0, 0);
        }
    }

    /// Reads base chunk `index` into the buffer at `pos` (a 4 KiB boundary, with room for the chunk rounded up to
    /// 4 KiB) and checks it; returns its length.
    fn read_chunk(&mut self, payload: &Payload, index: usize, pos: usize) -> Result<usize, ArtifactError> {
        let base =
            payload.base.as_ref().ok_or_else(|| ArtifactError::DeltaNeedsBase { payload: payload.name.clone() })?;
        let range = base.chunk_range(index);
        let want = (range.end - range.start) as usize;
        let dst = &mut self.buf[pos..pos + want.next_multiple_of(ALIGN)];
        let mut got = 0;
        while got < want {
            let from = range.start + got as u64;
            let read = match &self.direct {
                Some(d) => d.read_at(&mut dst[got..], from),
                None => self.buffered.read_at(&mut dst[got..want], from),
            };
            match read {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Some file systems accept O_DIRECT when opening and refuse it when reading.
                Err(e) if self.direct.is_some() && e.kind() == io::ErrorKind::InvalidInput => self.direct = None,
                Err(source) => {
                    return Err(ArtifactError::Io {
                        context: format!("reading the base of payload {:?} at byte {from}", payload.name),
                        source,
                    });
                }
            }
        }
        // A slot shorter than the base cannot hold it.
        if got < want || Digest::of(&dst[..want]) != base.chunks[index] {
            return Err(ArtifactError::DeltaBaseMismatch { payload: payload.name.clone(), offset: range.start });
        }
        Ok(want)
    }

    /// Checks that the base holds every base chunk that a chunk of delta `payload` refers to: what a device does
    /// before it writes anything, so that a device not running the delta's base refuses it with
    /// [`ArtifactError::DeltaBaseMismatch`] and its target slot untouched. Reads each such chunk once.
    pub fn check(&mut self, payload: &Payload) -> Result<(), ArtifactError> {
        let Some(base) = &payload.base else { return Ok(()) };
        let mut used = vec![false; base.chunks.len()];
        for r in payload.chunks.iter().filter_map(|c| c.reference) {
            used[r.first as usize..(r.first + r.count) as usize].fill(true);
        }
        self.reserve(base.chunk_size as usize);
        (self.first, self.count, self.len) = (0, 0, 0);
        for index in (0..used.len()).filter(|&i| used[i]) {
            self.read_chunk(payload, index, self.at)?;
        }
        Ok(())
    }

    /// The checked bytes of the base region that chunk `index` of `payload` is patched against, or `None` for a
    /// chunk that has no reference. The window must only be used with one payload.
    pub fn reference(&mut self, payload: &Payload, index: usize) -> Result<Option<&[u8]>, ArtifactError> {
        let Some(want) = payload.chunks[index].reference else { return Ok(None) };
        let (Some(base), Some(region)) = (&payload.base, payload.reference_range(index)) else {
            return Err(ArtifactError::DeltaNeedsBase { payload: payload.name.clone() });
        };
        let chunk_size = base.chunk_size as usize;
        self.reserve((region.end - region.start) as usize);
        if want.first < self.first || want.first >= self.first + self.count {
            (self.first, self.count, self.len) = (want.first, 0, 0);
        } else if want.first > self.first {
            // Drop the base chunks before the new region; move the rest to the front.
            let drop = (want.first - self.first) as usize * chunk_size;
            self.buf.copy_within(self.at + drop..self.at + self.len, self.at);
            self.len -= drop;
            self.count -= want.first - self.first;
            self.first = want.first;
        }
        let want_end = want.first + want.count;
        if self.first + self.count > want_end {
            self.count = want.count;
            self.len = want.count as usize * chunk_size;
        }
        while self.first + self.count < want_end {
            let next = (self.first + self.count) as usize;
            match self.read_chunk(payload, next, self.at + self.len) {
                Ok(n) => self.len += n,
                Err(e) => {
                    // A failed read leaves nothing unchecked behind.
                    (self.count, self.len) = (0, 0);
                    return Err(e);
                }
            }
            self.count += 1;
        }
        Ok(Some(&self.buf[self.at..self.at + self.len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{self, BuildOptions, DeltaBase, ImageSource};
    use crate::testing::noise;
    use crate::{ArtifactReader, Keyring, Manifest, Policy};

    const CHUNK: u64 = 64 << 10;

    struct Built {
        dir: tempfile::TempDir,
        old: Vec<u8>,
        new: Vec<u8>,
        artifact: Vec<u8>,
        ring: Keyring,
    }

    impl Built {
        fn file(&self, name: &str, bytes: &[u8]) -> File {
            let path = self.dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            File::open(path).unwrap()
        }

        fn reader(&self) -> ArtifactReader<&[u8]> {
            ArtifactReader::open(&self.artifact[..], &self.ring, &Policy::default()).unwrap()
        }

        fn manifest(&self) -> Manifest {
            self.reader().manifest().clone()
        }
    }

    /// A 1 MiB base and a new image that inserts 1000 bytes at 200 KiB (shifting everything after it), changes 8 KiB
    /// at 600 KiB and grows by 100 KiB of new data; the delta is made with a 128 KiB window.
    fn build() -> Built {
        let dir = tempfile::tempdir().unwrap();
        let old = noise(1 << 20, 1);
        let mut new = old[..200 << 10].to_vec();
        new.extend(noise(1000, 2));
        new.extend_from_slice(&old[200 << 10..]);
        new[600 << 10..608 << 10].copy_from_slice(&noise(8 << 10, 3));
        new.extend(noise(100 << 10, 4));
        std::fs::write(dir.path().join("old.img"), &old).unwrap();
        std::fs::write(dir.path().join("new.img"), &new).unwrap();
        let mut opts = BuildOptions::new(vec!["t".into()], "2");
        opts.chunk_size = CHUNK;
        opts.level = 3;
        let src = ImageSource {
            name: "rootfs".into(),
            slot_class: "rootfs".into(),
            path: dir.path().join("new.img"),
            base: Some(DeltaBase { path: dir.path().join("old.img"), window: 128 << 10 }),
        };
        let key = crate::keys::generate().unwrap();
        let mut artifact = Vec::new();
        builder::create(&opts, &[src], std::slice::from_ref(&key), &mut artifact).unwrap();
        let mut ring = Keyring::new();
        ring.add(key.verifying_key());
        Built { dir, old, new, artifact, ring }
    }

    fn read_all(r: &mut ArtifactReader<&[u8]>) -> Result<Vec<u8>, ArtifactError> {
        let (mut image, mut out) = (Vec::new(), Vec::new());
        while r.next_chunk(&mut out)?.is_some() {
            image.extend_from_slice(&out);
        }
        Ok(image)
    }

    #[test]
    fn a_delta_rebuilds_the_new_image_from_its_base_and_is_a_fraction_of_it() {
        let b = build();
        let m = b.manifest();
        let p = &m.payloads[0];
        assert_eq!((m.format_version.as_str(), p.kind.as_str()), ("1.2", "slot-delta"));
        let base = p.base.as_ref().unwrap();
        assert_eq!((base.size, base.sha256), (b.old.len() as u64, Digest::of(&b.old)));
        assert!(p.chunks[..16].iter().all(|c| c.reference.is_some()), "every chunk over the base is a patch");
        assert!(p.chunks[17..].iter().all(|c| c.reference.is_none()), "new data beyond the base's window is not");
        // Shifted and unchanged data costs almost nothing; the 1000 + 8 KiB + 100 KiB of new noise is what remains.
        assert!(p.stored_size < 120 << 10, "delta of {} bytes for ~109 KiB of new data", p.stored_size);

        let mut r = b.reader();
        r.set_base(0, b.file("base", &b.old));
        assert!(read_all(&mut r).unwrap() == b.new, "the delta decodes to the new image");
        BaseWindow::new(b.file("base", &b.old), None).check(p).unwrap();
    }

    #[test]
    fn a_device_not_running_the_base_is_refused_before_and_while_decoding() {
        let b = build();
        let p = b.manifest().payloads[0].clone();
        let mut other = b.old.clone();
        other[300 << 10] ^= 1;
        fn at<T: std::fmt::Debug>(r: Result<T, ArtifactError>) -> u64 {
            match r {
                Err(ArtifactError::DeltaBaseMismatch { offset, .. }) => offset,
                other => panic!("expected delta-base-mismatch, got {other:?}"),
            }
        }
        // The check before anything is written names the first base chunk that differs.
        assert_eq!(at(BaseWindow::new(b.file("other", &other), None).check(&p)), 4 * CHUNK);
        assert_eq!(at(BaseWindow::new(b.file("short", &b.old[..900 << 10]), None).check(&p)), 14 * CHUNK);
        // A reader given the wrong base refuses the first chunk whose reference covers the difference.
        let mut r = b.reader();
        r.set_base(0, b.file("other", &other));
        assert_eq!(at(read_all(&mut r)), 4 * CHUNK);
        // Without a base, a patched chunk is never decoded.
        let mut r = b.reader();
        assert!(matches!(read_all(&mut r), Err(ArtifactError::DeltaNeedsBase { .. })));
    }

    #[test]
    fn the_window_reads_each_base_chunk_once_in_order_and_follows_any_order() {
        let b = build();
        let p = b.manifest().payloads[0].clone();
        let mut w = BaseWindow::new(b.file("base", &b.old), None);
        for index in (0..p.chunks.len()).chain([3, 0, 9]) {
            let want = p.reference_range(index);
            let got = w.reference(&p, index).unwrap().map(<[u8]>::to_vec);
            assert_eq!(got.as_deref(), want.map(|r| &b.old[r.start as usize..r.end as usize]), "chunk {index}");
        }
    }

    #[test]
    fn delta_manifests_follow_their_rules() {
        let b = build();
        let good = b.manifest();
        let broken = |f: &dyn Fn(&mut crate::Payload)| {
            let mut m = good.clone();
            f(&mut m.payloads[0]);
            match m.validate() {
                Err(ArtifactError::InvalidManifest { field, .. }) => field,
                other => panic!("expected an invalid manifest, got {other:?}"),
            }
        };
        assert!(broken(&|p| p.base = None).ends_with("base"));
        assert!(broken(&|p| p.kind = "slot-image".into()).ends_with("base"));
        assert!(broken(&|p| p.chunks[1].stored_sha256 = None).ends_with("stored_sha256"));
        assert!(
            broken(&|p| p.chunks[1].reference = Some(crate::Reference { first: 15, count: 2 })).ends_with("reference")
        );
        assert!(
            broken(&|p| p.chunks[1].reference = Some(crate::Reference { first: 0, count: 0 })).ends_with("reference")
        );
        assert!(broken(&|p| p.base.as_mut().unwrap().chunks.pop().map(drop).unwrap_or(())).ends_with("base.chunks"));
        assert!(
            broken(&|p| {
                let base = p.base.as_mut().unwrap();
                base.chunk_size = 16 << 20;
                base.size = 48 << 20;
                base.chunks = vec![base.chunks[0]; 3];
                p.chunks[1].reference = Some(crate::Reference { first: 0, count: 3 });
            })
            .ends_with("reference")
        );
    }
}
