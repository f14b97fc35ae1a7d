//! The order of random faults, replayable from the seed each test prints.

/// A small xorshift generator; the seed is printed so that a run can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn seeded(named: Option<u64>) -> Self {
        let seed = std::env::var("ELECT_FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .or(named)
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    | 1
            });
        Rng(seed)
    }

    pub fn seed(&self) -> u64 {
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}
