//! A deliberately small ustar reader and writer.
//!
//! otter artifacts use only the subset of POSIX ustar that they need: regular files with short, plain names. The
//! reader rejects everything else (links, devices, directories, pax and GNU extension headers, long names) instead
//! of interpreting it, so the parser that sees unauthenticated bytes stays small enough to audit and fuzz.

use std::io::{self, Read, Write};

use crate::error::ArtifactError;

/// Size of a tar block and header, in bytes.
pub const BLOCK: usize = 512;

/// Longest entry name the reader accepts, in bytes (the ustar `name` field without `prefix`).
pub const MAX_NAME: usize = 100;

/// One entry header, as far as otter cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHeader {
    /// The entry name, validated: relative, no `..`, no `/`, printable ASCII.
    pub name: String,
    /// Size of the entry's data in bytes.
    pub size: u64,
}

/// Validates an entry name: a single plain path component of printable ASCII.
///
/// Artifacts never need directories, so the strictest rule is also the simplest one: no `/` at all rules out
/// absolute paths and traversal in one go.
pub fn check_name(name: &str) -> Result<(), ArtifactError> {
    let bad = |why: &str| ArtifactError::BadEntryName { name: name.to_owned(), reason: why.to_owned() };
    if name.is_empty() {
        return Err(bad("empty name"));
    }
    if name.len() > MAX_NAME {
        return Err(bad("longer than 100 bytes"));
    }
    if name.contains('/') {
        return Err(bad("contains '/' (absolute paths and directories are not allowed)"));
    }
    if name == "." || name == ".." {
        return Err(bad("is a relative path component"));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("contains characters other than printable ASCII"));
    }
    Ok(())
}

fn parse_octal(field: &[u8], what: &'static str) -> Result<u64, ArtifactError> {
    let bad = || ArtifactError::TarHeader { reason: format!("invalid {what} field") };
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // GNU base-256 encoding: only ever used for huge values, which otter artifacts never need.
        return Err(ArtifactError::TarHeader { reason: format!("base-256 {what} field is not supported") });
    }
    let text: Vec<u8> = field.iter().copied().take_while(|&b| b != 0).collect();
    let text = std::str::from_utf8(&text).map_err(|_| bad())?.trim_matches(' ');
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| bad())
}

fn header_checksum(block: &[u8; BLOCK]) -> u64 {
    block.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { u64::from(b' ') } else { u64::from(b) }).sum()
}

/// Reads exactly `buf.len()` bytes, telling "clean end of stream before any byte" apart from truncation.
/// Returns `Ok(false)` only when the stream ended before the first byte.
fn read_block_or_eof<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Maps an I/O error while reading `what` to a typed error (truncation is its own variant).
pub(crate) fn read_err(what: &str) -> impl FnOnce(io::Error) -> ArtifactError + '_ {
    move |e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ArtifactError::Truncated { at: what.to_owned() }
        } else {
            ArtifactError::Io { context: format!("reading {what}"), source: e }
        }
    }
}

/// Parses one 512-byte header block. Returns `Ok(None)` for an all-zero block (end-of-archive marker).
pub fn parse_header(block: &[u8; BLOCK]) -> Result<Option<EntryHeader>, ArtifactError> {
    if block.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let stored = parse_octal(&block[148..156], "checksum")?;
    if stored != header_checksum(block) {
        return Err(ArtifactError::TarHeader { reason: "header checksum mismatch".into() });
    }
    if &block[257..262] != b"ustar" {
        return Err(ArtifactError::TarHeader { reason: "not a ustar header".into() });
    }
    let name_field = &block[0..100];
    let name_len = name_field.iter().position(|&b| b == 0).unwrap_or(100);
    let name = String::from_utf8_lossy(&name_field[..name_len]).into_owned();
    if block[345..500].iter().any(|&b| b != 0) {
        return Err(ArtifactError::BadEntryName { name, reason: "uses the ustar prefix field".into() });
    }
    let kind = block[156];
    if kind != b'0' && kind != 0 {
        let what = match kind {
            b'1' => "hard link",
            b'2' => "symbolic link",
            b'3' => "character device",
            b'4' => "block device",
            b'5' => "directory",
            b'6' => "fifo",
            b'x' | b'g' => "pax extended header",
            b'L' | b'K' => "GNU long name",
            _ => "unknown entry type",
        };
        return Err(ArtifactError::NotARegularFile { name, kind: what.into() });
    }
    check_name(&name)?;
    let size = parse_octal(&block[124..136], "size")?;
    Ok(Some(EntryHeader { name, size }))
}

/// Sequential tar reader over any `Read`: no seeking, no buffering beyond one header.
pub struct TarReader<R> {
    inner: R,
    /// Bytes of the current entry's data not consumed yet.
    remaining: u64,
    /// Padding after the current entry's data, to the next block boundary.
    padding: u64,
    /// Total bytes consumed from `inner`.
    position: u64,
}

impl<R: Read> TarReader<R> {
    /// Wraps a reader positioned at the start of a tar stream.
    pub fn new(inner: R) -> Self {
        Self { inner, remaining: 0, padding: 0, position: 0 }
    }

    /// Bytes read from the underlying stream so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Skips what is left of the current entry and reads the next header.
    /// Returns `Ok(None)` at the end-of-archive marker.
    pub fn next_entry(&mut self) -> Result<Option<EntryHeader>, ArtifactError> {
        if self.remaining > 0 {
            return Err(ArtifactError::TarHeader { reason: "entry data not fully consumed".into() });
        }
        self.skip(self.padding, "entry padding")?;
        self.padding = 0;
        let mut block = [0u8; BLOCK];
        match read_block_or_eof(&mut self.inner, &mut block) {
            Ok(true) => self.position += BLOCK as u64,
            // A stream that ends where a header should start lacks its end-of-archive marker.
            Ok(false) => {
                return Err(ArtifactError::Truncated { at: "end-of-archive marker".into() });
            }
            Err(e) => return Err(read_err("tar header")(e)),
        }
        let header = parse_header(&block)?;
        if let Some(h) = &header {
            self.remaining = h.size;
            self.padding = (BLOCK as u64 - h.size % BLOCK as u64) % BLOCK as u64;
        }
        Ok(header)
    }

    /// Reads exactly `buf.len()` bytes of the current entry's data; it is an error to read past the entry.
    pub fn read_data(&mut self, buf: &mut [u8], what: &str) -> Result<(), ArtifactError> {
        if buf.len() as u64 > self.remaining {
            return Err(ArtifactError::TarHeader { reason: format!("{what} extends past the end of its tar entry") });
        }
        self.inner.read_exact(buf).map_err(read_err(what))?;
        self.remaining -= buf.len() as u64;
        self.position += buf.len() as u64;
        Ok(())
    }

    /// Passes over the next `n` bytes of the current entry's data without handing them out: `skip` moves `inner`
    /// forward by exactly `n` bytes (a seek, a ranged re-request, or reading and discarding).
    pub fn skip_data(
        &mut self,
        n: u64,
        what: &str,
        skip: impl FnOnce(&mut R, u64) -> io::Result<()>,
    ) -> Result<(), ArtifactError> {
        if n > self.remaining {
            return Err(ArtifactError::TarHeader { reason: format!("{what} extends past the end of its tar entry") });
        }
        skip(&mut self.inner, n).map_err(read_err(what))?;
        self.remaining -= n;
        self.position += n;
        Ok(())
    }

    /// The underlying reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Bytes of the current entry not read yet.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<(), ArtifactError> {
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(read_err(what))?;
        self.position += copied;
        if copied != n {
            return Err(ArtifactError::Truncated { at: what.to_owned() });
        }
        Ok(())
    }

    /// Skips the padding of the current (fully read) entry and returns the underlying reader, positioned at the
    /// next header. Used to copy the rest of a stream verbatim.
    pub fn into_rest(mut self) -> Result<R, ArtifactError> {
        if self.remaining > 0 {
            return Err(ArtifactError::TarHeader { reason: "entry data not fully consumed".into() });
        }
        self.skip(self.padding, "entry padding")?;
        Ok(self.inner)
    }

    /// Consumes the second zero block of the end-of-archive marker (the first was returned as `None` by
    /// `next_entry`) and checks that the stream ends right after it. Anything else, even the zero padding some tar
    /// writers add to fill a record, is trailing data: the format allows nothing after the marker.
    pub fn finish(&mut self) -> Result<(), ArtifactError> {
        let mut block = [0u8; BLOCK];
        match read_block_or_eof(&mut self.inner, &mut block) {
            Ok(true) if block.iter().all(|&b| b == 0) => self.position += BLOCK as u64,
            Ok(true) => return Err(ArtifactError::TrailingData),
            Ok(false) => return Err(ArtifactError::Truncated { at: "end-of-archive marker".into() }),
            Err(e) => return Err(read_err("end-of-archive marker")(e)),
        }
        // One byte is enough to tell: a stream that has one more is not an artifact.
        let mut byte = [0u8; 1];
        loop {
            return match self.inner.read(&mut byte) {
                Ok(0) => Ok(()),
                Ok(_) => Err(ArtifactError::TrailingData),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(read_err("the end of the stream")(e)),
            };
        }
    }
}

/// Builds a ustar header for a regular file.
pub fn build_header(name: &str, size: u64, mtime: u64) -> Result<[u8; BLOCK], ArtifactError> {
    check_name(name)?;
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], value: u64| -> Result<(), ArtifactError> {
        let text = format!("{:0width$o}\0", value, width = field.len() - 1);
        if text.len() != field.len() {
            return Err(ArtifactError::TarHeader { reason: format!("value {value} does not fit a ustar field") });
        }
        field.copy_from_slice(text.as_bytes());
        Ok(())
    };
    octal(&mut h[100..108], 0o644)?;
    octal(&mut h[108..116], 0)?;
    octal(&mut h[116..124], 0)?;
    octal(&mut h[124..136], size)?;
    octal(&mut h[136..148], mtime)?;
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum = header_checksum(&h);
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    Ok(h)
}

/// Sequential tar writer.
pub struct TarWriter<W> {
    inner: W,
    mtime: u64,
}

impl<W: Write> TarWriter<W> {
    /// Starts a tar stream; every entry gets `mtime` as its modification time (reproducible output).
    pub fn new(inner: W, mtime: u64) -> Self {
        Self { inner, mtime }
    }

    /// Writes a whole entry from memory.
    pub fn append(&mut self, name: &str, data: &[u8]) -> Result<(), ArtifactError> {
        self.append_reader(name, data.len() as u64, &mut &data[..])
    }

    /// Writes an entry of exactly `size` bytes copied from `data`.
    pub fn append_reader(&mut self, name: &str, size: u64, data: &mut dyn Read) -> Result<(), ArtifactError> {
        let io_err = |e| ArtifactError::Io { context: format!("writing tar entry {name}"), source: e };
        let header = build_header(name, size, self.mtime)?;
        self.inner.write_all(&header).map_err(io_err)?;
        let copied = io::copy(&mut data.take(size), &mut self.inner).map_err(io_err)?;
        if copied != size {
            return Err(ArtifactError::Truncated { at: format!("source of tar entry {name}") });
        }
        let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        self.inner.write_all(&[0u8; BLOCK][..pad as usize]).map_err(io_err)?;
        Ok(())
    }

    /// Returns the inner writer without writing the end-of-archive marker (to append raw entries).
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// Writes the end-of-archive marker and returns the inner writer.
    pub fn finish(mut self) -> Result<W, ArtifactError> {
        self.inner
            .write_all(&[0u8; 2 * BLOCK])
            .map_err(|e| ArtifactError::Io { context: "writing end-of-archive marker".into(), source: e })?;
        Ok(self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = TarWriter::new(Vec::new(), 0);
        for (n, d) in entries {
            w.append(n, d).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn round_trip() {
        let data = archive(&[("a", b"hello"), ("b.bin", &[7u8; 1500])]);
        let mut r = TarReader::new(&data[..]);
        let h = r.next_entry().unwrap().unwrap();
        assert_eq!(h, EntryHeader { name: "a".into(), size: 5 });
        let mut buf = [0u8; 5];
        r.read_data(&mut buf, "a").unwrap();
        assert_eq!(&buf, b"hello");
        let h = r.next_entry().unwrap().unwrap();
        assert_eq!(h.size, 1500);
        let mut buf = vec![0u8; 1500];
        r.read_data(&mut buf, "b").unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        assert!(r.next_entry().unwrap().is_none());
        r.finish().unwrap();
    }

    #[test]
    fn nothing_may_follow_the_end_of_archive_marker() {
        let data = archive(&[("a", b"hello")]);
        for extra in [&[0u8; BLOCK][..], &[0u8; 1][..], b"x"] {
            let mut long = data.clone();
            long.extend_from_slice(extra);
            let mut r = TarReader::new(&long[..]);
            r.next_entry().unwrap();
            r.read_data(&mut [0u8; 5], "a").unwrap();
            assert!(r.next_entry().unwrap().is_none());
            assert!(matches!(r.finish(), Err(ArtifactError::TrailingData)), "{} bytes after the marker", extra.len());
        }
    }

    #[test]
    fn gnu_tar_reads_our_output() {
        // The stream is plain ustar, so the system tar must list it.
        let data = archive(&[("manifest.json", b"{}")]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.tar");
        std::fs::write(&path, &data).unwrap();
        let out = std::process::Command::new("tar").arg("tf").arg(&path).output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "manifest.json\n");
    }

    #[test]
    fn rejects_bad_names() {
        for name in ["", "/etc/passwd", "../x", "a/b", "..", "sp ace", "x\u{7f}"] {
            assert!(matches!(check_name(name), Err(ArtifactError::BadEntryName { .. })), "{name:?}");
        }
        check_name("rootfs.img.zst").unwrap();
    }

    #[test]
    fn rejects_links_and_devices() {
        for (kind, what) in
            [(b'2', "symbolic link"), (b'1', "hard link"), (b'3', "character device"), (b'5', "directory")]
        {
            let mut h = build_header("x", 0, 0).unwrap();
            h[156] = kind;
            h[148..156].copy_from_slice(b"        ");
            let sum = header_checksum(&h);
            h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            match parse_header(&h) {
                Err(ArtifactError::NotARegularFile { kind, .. }) => assert_eq!(kind, what),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn rejects_corrupt_checksum_and_truncation() {
        let mut data = archive(&[("a", b"hello")]);
        data[0] = b'b';
        assert!(matches!(TarReader::new(&data[..]).next_entry(), Err(ArtifactError::TarHeader { .. })));
        let data = archive(&[("a", b"hello")]);
        let mut r = TarReader::new(&data[..300]);
        assert!(matches!(r.next_entry(), Err(ArtifactError::Truncated { .. })));
        let mut r = TarReader::new(&data[..514]);
        r.next_entry().unwrap();
        let mut buf = [0u8; 5];
        assert!(matches!(r.read_data(&mut buf, "a"), Err(ArtifactError::Truncated { .. })));
    }

    #[test]
    fn cannot_read_past_entry() {
        let data = archive(&[("a", b"hi")]);
        let mut r = TarReader::new(&data[..]);
        r.next_entry().unwrap();
        let mut buf = [0u8; 3];
        assert!(r.read_data(&mut buf, "a").is_err());
    }
}
