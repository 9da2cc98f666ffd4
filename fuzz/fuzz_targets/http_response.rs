//! Fuzzes the HTTP/1.1 response reader: a head, then the body its framing names (Content-Length, chunked, or to
//! the end), read through a one-byte and a larger buffer. Nothing may panic, the head stays within its bounds,
//! and both buffer sizes decode the same bytes.
#![no_main]

use std::io::BufReader;

use libfuzzer_sys::fuzz_target;
use otter_common::http::wire::{self, Chunked, Framing, MAX_HEAD, MAX_HEADERS};

fuzz_target!(|data: &[u8]| {
    let a = decode(data, 1);
    let b = decode(data, 4096);
    assert_eq!(a, b, "the split points change the result");
});

/// The status and body, or `None` on any error.
fn decode(data: &[u8], cap: usize) -> Option<(u16, Vec<u8>)> {
    use std::io::Read as _;
    let mut r = BufReader::with_capacity(cap, data);
    let head = wire::read_head(&mut r).ok()?;
    assert!(head.headers.len() <= MAX_HEADERS);
    assert!(head.headers.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>() <= MAX_HEAD);
    let mut body = Vec::new();
    match head.framing().ok()? {
        Framing::Length(n) => {
            r.by_ref().take(n).read_to_end(&mut body).ok()?;
            (body.len() as u64 == n).then_some(())?;
        }
        Framing::Chunked { .. } => {
            let (mut st, mut buf) = (Chunked::Size, [0u8; 7]);
            loop {
                match wire::read_chunked(&mut r, &mut st, &mut buf).ok()? {
                    0 => break,
                    n => body.extend_from_slice(&buf[..n]),
                }
            }
        }
        Framing::Close => {
            r.read_to_end(&mut body).ok()?;
        }
    }
    Some((head.status, body))
}
