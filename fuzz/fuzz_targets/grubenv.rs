//! Fuzzes the GRUB environment block decoder. Nothing may panic, and a decoded block must
//! re-encode (when it fits) into one that decodes to the same variables.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otter_bootloader::grub::{GRUBENV_SIGNATURE, GrubEnv};

fuzz_target!(|data: &[u8]| {
    check(data);
    // Most inputs lack the header; also try them behind a valid one.
    let mut block = GRUBENV_SIGNATURE.to_vec();
    block.extend_from_slice(data);
    check(&block);
});

fn check(block: &[u8]) {
    let Ok(env) = GrubEnv::from_bytes(block) else {
        return;
    };
    if let Ok(bytes) = env.to_bytes() {
        assert_eq!(bytes.len(), env.size());
        let again = GrubEnv::from_bytes(&bytes).expect("re-encoded block decodes");
        assert_eq!(
            again.iter().collect::<Vec<_>>(),
            env.iter().collect::<Vec<_>>()
        );
    }
}
