//! Capped exponential backoff with full jitter (a uniform delay between zero and the capped exponential), as AWS's
//! architecture guidance recommends: retries of many workers spread out instead of arriving together.

use rand::Rng;
use std::time::Duration;

/// The delay before retry `retry` (1 for the first): uniform in `[0, min(cap, base * 2^(retry-1))]`.
pub fn full_jitter(base: Duration, cap: Duration, retry: u32, rng: &mut impl Rng) -> Duration {
    let ceiling = exponential(base, cap, retry);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.random_range(0..=millis))
}

/// `min(cap, base * 2^(retry-1))`.
pub fn exponential(base: Duration, cap: Duration, retry: u32) -> Duration {
    let exponent = retry.saturating_sub(1).min(30);
    base.saturating_mul(1 << exponent).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_double_up_to_the_cap_and_jitter_stays_under_it() {
        let (base, cap) = (Duration::from_secs(1), Duration::from_secs(5));
        let ceilings: Vec<u64> = (1..=5).map(|n| exponential(base, cap, n).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 5, 5]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..1000).map(|_| full_jitter(base, cap, 3, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(4)));
        let spread = delays.iter().filter(|d| **d < Duration::from_secs(2)).count();
        assert!((350..650).contains(&spread), "uniform over [0, 4 s]: {spread} of 1000 under 2 s");
    }
}
