//! Deterministic randomness for the tests and fuzzers: one generator, and numbers (seeds,
//! iteration counts) from the environment. A test that draws its seed from the clock prints
//! it, so that any run can be repeated.
#![allow(dead_code)]

/// splitmix64: seeds a generator from (run seed, input index).
pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// xorshift64*.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(splitmix(seed) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// An integer near an edge: 0, 1, small, the old value +-1, powers of two, max, ...
    pub fn interesting(&mut self, old: u64, related: &[u64]) -> u64 {
        match self.below(12) {
            0 => 0,
            1 => 1,
            2 => old.wrapping_add(1),
            3 => old.wrapping_sub(1),
            4 => u64::MAX,
            5 => 1 << 32,
            6 => (1 << 32) - 1,
            7 => 4 << 30,
            8 => 1u64 << self.below(64),
            9 => related
                .get(self.below(related.len()))
                .copied()
                .unwrap_or(old),
            10 => old ^ (1 << self.below(64)),
            _ => self.next() % 100_000,
        }
    }
}

/// The number in environment variable `name`: decimal or `0x` hexadecimal, `_` allowed.
pub fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim().replace('_', "");
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// A seed from the clock, for runs that were given none.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

/// The run's seed: `env` if set, else from the clock; printed.
pub fn seed_from_env(env: &str) -> u64 {
    let seed = env_u64(env).unwrap_or_else(clock_seed);
    println!("seed {seed:#x} (repeat with {env}={seed:#x})");
    seed
}
