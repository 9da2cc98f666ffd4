//! Fuzzes the U-Boot environment decoder: single and redundant layouts, the bare data parser,
//! and re-encoding whatever decodes. Nothing may panic, and a decoded environment must
//! re-encode into an image that decodes to the same variables.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otter_bootloader::uboot::{FlagScheme, UBootEnv, header_len, pick_current};

fuzz_target!(|data: &[u8]| {
    let _ = UBootEnv::parse_data(data);
    for redundant in [false, true] {
        let Ok(decoded) = UBootEnv::decode(data, redundant) else {
            continue;
        };
        let size = data
            .len()
            .max(header_len(redundant) + decoded.env.data_bytes().len());
        let image = decoded
            .env
            .to_bytes(size, decoded.flags, 0xFF)
            .expect("a decoded env fits the size it came in");
        let again = UBootEnv::decode(&image, redundant).expect("re-encoded env decodes");
        assert_eq!(again.env, decoded.env);
        assert_eq!(again.flags, decoded.flags);
    }
    // Random CRC-valid data reaches the variable parser.
    if let Some((&flag, rest)) = data.split_first() {
        let mut image = crc32fast_hash(rest).to_le_bytes().to_vec();
        image.extend_from_slice(rest);
        let _ = UBootEnv::decode(&image, false);
        for scheme in [FlagScheme::Incremental, FlagScheme::Boolean] {
            let _ = pick_current([Some(flag), rest.first().copied()], scheme);
        }
    }
});

/// CRC-32 (zlib), as the env header uses; bitwise so the target needs no extra dependency.
fn crc32fast_hash(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
