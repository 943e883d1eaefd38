//! The CRC32 of a run of zero bytes without feeding them to the hasher, so that tests can
//! give a sparse file's hole (up to 2^64 - 1 bytes) the checksum a reader computes over it.

/// CRC32 state of `n` zero bytes, by doubling: the state of 2^k zeros is combined with
/// itself for 2^(k+1), and those of the bits set in `n` are combined in order.
pub fn zeros_crc(n: u64) -> crc32fast::Hasher {
    let mut result = crc32fast::Hasher::new();
    let mut power = crc32fast::Hasher::new();
    power.update(&[0]);
    let mut bit = 1u64;
    // `bit` becomes 0 past 2^63, which ends the loop for any `n`.
    while bit != 0 && bit <= n {
        if n & bit != 0 {
            result.combine(&power);
        }
        let copy = power.clone();
        power.combine(&copy);
        bit <<= 1;
    }
    result
}

#[test]
fn zeros_crc_equals_the_crc_of_the_zeros() {
    for n in [0u64, 1, 2, 3, 7, 64, 1000, 4096, 65_537] {
        let mut fed = crc32fast::Hasher::new();
        fed.update(&vec![0; n as usize]);
        assert_eq!(zeros_crc(n).finalize(), fed.finalize(), "{n} zeros");
    }
}
