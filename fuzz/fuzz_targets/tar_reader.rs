//! Fuzzes the tar reader and the artifact reader's framing on arbitrary streams.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otter_artifact::tar::TarReader;
use otter_artifact::{ArtifactReader, Keyring, Policy};

fuzz_target!(|data: &[u8]| {
    let mut r = TarReader::new(data);
    let mut buf = vec![0u8; 4096];
    for _ in 0..64 {
        match r.next_entry() {
            Ok(Some(h)) => {
                // Read the entry in bounded pieces: a huge declared size must fail as truncation, not allocate.
                let mut left = h.size;
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    if r.read_data(&mut buf[..n], "data").is_err() {
                        return;
                    }
                    left -= n as u64;
                }
            }
            Ok(None) => {
                let _ = r.finish();
                break;
            }
            Err(_) => break,
        }
    }
    // With an empty keyring nothing can verify; the reader must fail cleanly wherever the bytes stop making sense.
    assert!(ArtifactReader::open(data, &Keyring::new(), &Policy::default()).is_err());
});
