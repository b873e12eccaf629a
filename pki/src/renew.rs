//! Certificate renewal timing: a random instant between 50% and 80% of a certificate's lifetime (pure, no IO).

use std::time::{Duration, SystemTime};

use rand::Rng;

/// The `[50%, 80%]` instants of the lifetime from `not_before` to `not_after`.
///
/// If `not_after` is not after `not_before` both instants equal `not_before`.
pub fn renewal_window(not_before: SystemTime, not_after: SystemTime) -> (SystemTime, SystemTime) {
    let life = not_after.duration_since(not_before).unwrap_or(Duration::ZERO);
    let start = not_before + life / 2;
    let end = not_before + (life - life / 5);
    (start, end)
}

/// How long to wait from `now` until renewing: a uniform random instant in the
/// renewal window, minus the time already elapsed; zero if that instant has passed.
pub fn renewal_delay(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
    rng: &mut impl Rng,
) -> Duration {
    let (start, end) = renewal_window(not_before, not_after);
    let span = end.duration_since(start).unwrap_or(Duration::ZERO);
    let offset_nanos: u128 = rng.gen_range(0..=span.as_nanos());
    let target = start + nanos_to_duration(offset_nanos);
    target.duration_since(now).unwrap_or(Duration::ZERO)
}

fn nanos_to_duration(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // The remainder is below one billion, so it fits in u32.
    let sub = (nanos % NANOS_PER_SEC) as u32;
    Duration::new(secs, sub)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const DAY: u64 = 24 * 60 * 60;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn window_is_50_to_80_percent() {
        let (start, end) = renewal_window(at(1000), at(1000 + 100 * DAY));
        assert_eq!(start, at(1000 + 50 * DAY));
        assert_eq!(end, at(1000 + 80 * DAY));
    }

    #[test]
    fn inverted_validity_renews_now() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(renewal_window(at(10), at(5)), (at(10), at(10)));
        assert_eq!(renewal_delay(at(10), at(5), at(20), &mut rng), Duration::ZERO);
    }

    #[test]
    fn delays_spread_over_the_window() {
        let mut rng = StdRng::seed_from_u64(7);
        let (nb, na) = (at(0), at(90 * DAY));
        let life = (90 * DAY) as f64;
        let fractions: Vec<f64> =
            (0..10_000).map(|_| renewal_delay(nb, na, nb, &mut rng).as_secs_f64() / life).collect();
        let min = fractions.iter().cloned().fold(f64::MAX, f64::min);
        let max = fractions.iter().cloned().fold(f64::MIN, f64::max);
        assert!((0.5..0.502).contains(&min), "min {min}");
        assert!(max > 0.798 && max <= 0.8, "max {max}");
        let mut buckets = [0u32; 10];
        for f in &fractions {
            let idx = (((f - 0.5) / 0.03) as usize).min(9);
            buckets[idx] += 1;
        }
        // 1000 expected per bucket; allow generous noise.
        assert!(buckets.iter().all(|&n| (850..1150).contains(&n)), "{buckets:?}");
    }

    proptest! {
        #[test]
        fn delay_lands_in_window(
            nb in 0u64..4_000_000_000,
            life in 1u64..(400 * DAY),
            before in 0u64..(200 * DAY),
            seed in any::<u64>(),
        ) {
            let (not_before, not_after) = (at(nb), at(nb + life));
            let (start, end) = renewal_window(not_before, not_after);
            let now = start.checked_sub(Duration::from_secs(before)).unwrap_or(start);
            let mut rng = StdRng::seed_from_u64(seed);
            let when = now + renewal_delay(not_before, not_after, now, &mut rng);
            prop_assert!(when >= start && when <= end);
        }

        #[test]
        fn zero_after_window(life in 1u64..(400 * DAY), late in 1u64..DAY, seed in any::<u64>()) {
            let (not_before, not_after) = (at(0), at(life));
            let (_, end) = renewal_window(not_before, not_after);
            let mut rng = StdRng::seed_from_u64(seed);
            let now = end + Duration::from_secs(late);
            prop_assert_eq!(renewal_delay(not_before, not_after, now, &mut rng), Duration::ZERO);
        }
    }
}
