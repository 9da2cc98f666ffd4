//! Fuzzes the parsers that see bytes before (signature block) or right after (manifest) authentication.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otter_artifact::{Manifest, SignatureBlock};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        // Whatever parses must validate and survive a round trip.
        assert!(m.validate().is_ok());
        assert_eq!(Manifest::parse(&m.to_bytes()).unwrap(), m);
    }
    if let Ok(b) = SignatureBlock::parse(data) {
        assert_eq!(SignatureBlock::parse(&b.to_bytes()).unwrap(), b);
    }
});
