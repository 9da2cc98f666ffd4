//! Test data for the tests and benchmarks of otter's crates (build hosts only).

/// `len` reproducible pseudo-random bytes (xorshift64 from `seed`): zstd cannot shrink them, so only a patch against
/// a base makes a delta of them small.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
