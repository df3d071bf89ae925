//! Unleash's bucketing, bit for bit: MurmurHash3 (x86, 32-bit) of `groupId:value`, seed 0 for rollouts and
//! 86028157 for variants. Flags imported from Unleash put every context in the same bucket Unleash does.

/// 100% in hundredths of a percent.
pub const FULL: u32 = 10_000;
const ROLLOUT_SEED: u32 = 0;
const VARIANT_SEED: u32 = 86_028_157;

fn murmur(group: &str, value: &str, seed: u32) -> u32 {
    // `groupId:value` without a heap allocation for the usual short keys.
    let mut buffer = [0u8; 256];
    let len = group.len() + 1 + value.len();
    if len <= buffer.len() {
        buffer[..group.len()].copy_from_slice(group.as_bytes());
        buffer[group.len()] = b':';
        buffer[group.len() + 1..len].copy_from_slice(value.as_bytes());
        murmur3_x86_32(&buffer[..len], seed)
    } else {
        murmur3_x86_32(format!("{group}:{value}").as_bytes(), seed)
    }
}

/// MurmurHash3 x86_32 over a slice. The `murmur3` crate computes the same through `io::Read`, four bytes per
/// call, which made hashing most of the cost of a variant choice; the tests check the two agree.
fn murmur3_x86_32(bytes: &[u8], seed: u32) -> u32 {
    fn mix(k: u32) -> u32 {
        k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593)
    }
    let mut hash = seed;
    let blocks = bytes.chunks_exact(4);
    let tail = blocks.remainder();
    for block in blocks {
        let k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        hash = (hash ^ mix(k)).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    if !tail.is_empty() {
        let k = tail.iter().rev().fold(0u32, |k, &byte| (k << 8) | u32::from(byte));
        hash ^= mix(k);
    }
    // The reference keeps the length as a u32; keys are far shorter than 4 GiB.
    hash ^= bytes.len() as u32;
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^ (hash >> 16)
}

/// The rollout bucket, 0 to 9999: `bucket < percentage × 100` is the rollout test. Unleash's own test is
/// `hash % 100 + 1 <= percentage`; the hundreds digit here is `hash % 100`, and the next two digits come from
/// `hash / 100`, so for whole percentages the two tests agree exactly and two decimals still bucket uniformly.
pub fn rollout_bucket(group: &str, value: &str) -> u32 {
    let hash = murmur(group, value, ROLLOUT_SEED);
    (hash % 100) * 100 + (hash / 100) % 100
}

/// Unleash's variant target, 1 to `total_weight`.
pub fn variant_target(group: &str, value: &str, total_weight: u32) -> u32 {
    murmur(group, value, VARIANT_SEED) % total_weight.max(1) + 1
}

pub fn random_bucket() -> u32 {
    rand::random_range(0..FULL)
}

pub fn random_target(total_weight: u32) -> u32 {
    rand::random_range(1..=total_weight.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    /// Unleash's normalisation, as its SDKs write it.
    fn unleash_normalized(group: &str, value: &str) -> u32 {
        murmur(group, value, ROLLOUT_SEED) % 100 + 1
    }

    #[test]
    fn known_vectors_match_murmur3_x86_32() {
        // Reference values of MurmurHash3_x86_32 (seed 0), as published with the algorithm's test suites.
        assert_eq!(murmur3::murmur3_32(&mut Cursor::new(b""), 0).unwrap(), 0);
        assert_eq!(murmur3::murmur3_32(&mut Cursor::new(b"hello"), 0).unwrap(), 0x248b_fa47);
        // Unleash's own published example: user 123 in group "gr1" is in bucket 73 of 100.
        assert_eq!(unleash_normalized("gr1", "123"), 73);
    }

    #[test]
    fn long_keys_hash_like_short_ones() {
        let group = "g".repeat(300);
        let direct = murmur3::murmur3_32(&mut Cursor::new(format!("{group}:v")), 0).unwrap();
        assert_eq!(murmur(&group, "v", 0), direct);
    }

    #[test]
    fn slice_murmur_matches_the_reference_crate_at_every_tail_length() {
        for len in 0..=64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            for seed in [ROLLOUT_SEED, VARIANT_SEED, u32::MAX] {
                let reference = murmur3::murmur3_32(&mut Cursor::new(&bytes), seed).unwrap();
                assert_eq!(murmur3_x86_32(&bytes, seed), reference, "{len} bytes, seed {seed}");
            }
        }
    }

    proptest! {
        #[test]
        fn slice_murmur_matches_the_reference_crate(bytes in proptest::collection::vec(any::<u8>(), 0..300), seed: u32) {
            let reference = murmur3::murmur3_32(&mut Cursor::new(&bytes), seed).unwrap();
            prop_assert_eq!(murmur3_x86_32(&bytes, seed), reference);
        }

        #[test]
        fn whole_percentages_agree_with_unleash(group in ".{0,40}", value in ".{0,40}", percentage in 0u32..=100) {
            let unleash_in = percentage > 0 && unleash_normalized(&group, &value) <= percentage;
            prop_assert_eq!(rollout_bucket(&group, &value) < percentage * 100, unleash_in);
        }

        #[test]
        fn raising_a_percentage_never_removes_anyone(
            group in "[a-z]{1,12}",
            value in "[a-zA-Z0-9-]{1,24}",
            low in 0u32..=FULL,
            raise in 0u32..=FULL,
        ) {
            let high = (low + raise).min(FULL);
            let bucket = rollout_bucket(&group, &value);
            prop_assert!(bucket >= low || bucket < high);
        }
    }

    #[test]
    fn buckets_are_uniform() {
        // 100,000 organizations into 100 whole-percent buckets and into 100 hundredth-percent buckets of the
        // first percent: chi-squared against uniform stays under the 0.999 quantile for 99 degrees of freedom.
        let n = 100_000u32;
        let mut coarse = [0f64; 100];
        let mut fine = [0f64; 100];
        for i in 0..n {
            let bucket = rollout_bucket("uniformity", &format!("org-{i}"));
            coarse[(bucket / 100) as usize] += 1.0;
            fine[(bucket % 100) as usize] += 1.0;
        }
        let chi = |counts: &[f64; 100]| {
            let expected = f64::from(n) / 100.0;
            counts.iter().map(|c| (c - expected).powi(2) / expected).sum::<f64>()
        };
        assert!(chi(&coarse) < 148.2, "whole percents: chi² {}", chi(&coarse));
        assert!(chi(&fine) < 148.2, "hundredths: chi² {}", chi(&fine));
    }

    #[test]
    fn variant_targets_span_the_weights() {
        let mut seen = [false; 3];
        for i in 0..300 {
            let target = variant_target("flag", &i.to_string(), 3);
            assert!((1..=3).contains(&target));
            seen[(target - 1) as usize] = true;
        }
        assert_eq!(seen, [true; 3]);
    }
}
