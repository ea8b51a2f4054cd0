//! Latency histograms as `endpoint_minutes` keeps them: the deliverer counts each
//! successful attempt's duration into a bucket, query merges minutes and reads percentiles
//! off the counts. Exact below 10 ms, then buckets 20 % wide up to two minutes, so a
//! percentile read back is within 20 % of the true one (placed inside its bucket: a lone
//! value within 10 %).

use std::sync::LazyLock;

/// The upper bound (ms, inclusive) of every bucket but the last, which takes the rest.
static BOUNDS: LazyLock<Vec<i64>> = LazyLock::new(|| {
    let mut bounds: Vec<i64> = (0..10).collect();
    let mut x = 10.0_f64;
    while x < 120_000.0 {
        x *= 1.2;
        bounds.push(x.ceil() as i64);
    }
    bounds
});

/// How many buckets a histogram has.
pub fn buckets() -> usize {
    BOUNDS.len() + 1
}

/// The bucket a duration of `ms` milliseconds counts in.
pub fn bucket(ms: i64) -> usize {
    BOUNDS.partition_point(|&upper| upper < ms)
}

/// An empty histogram.
pub fn empty() -> Vec<i32> {
    vec![0; buckets()]
}

/// Adds `other` into `into`, bucket by bucket (a shorter one counts as zeros).
pub fn merge(into: &mut Vec<i64>, other: &[i32]) {
    if into.len() < other.len() {
        into.resize(other.len(), 0);
    }
    for (sum, n) in into.iter_mut().zip(other) {
        *sum += i64::from(*n);
    }
}

/// The `p`th percentile (1-100) of the counted durations, in ms; `None` when nothing was
/// counted. Nearest rank, placed linearly inside its bucket.
pub fn percentile(counts: &[i64], p: u32) -> Option<i64> {
    let total: i64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total * i64::from(p) + 99) / 100).max(1);
    let mut below = 0;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && below + n >= rank {
            let low = if i == 0 { 0 } else { BOUNDS[i - 1] };
            let Some(&high) = BOUNDS.get(i) else {
                return Some(low); // the open-ended last bucket
            };
            if high - low <= 1 {
                return Some(high);
            }
            // The rank's place among the bucket's n values, each taken at the middle of its
            // share of (low, high]: a lone value reads as the bucket's middle (within 10 %).
            let inside = ((rank - below) as f64 - 0.5) / n as f64;
            return Some(low + ((high - low) as f64 * inside).ceil() as i64);
        }
        below += n;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(durations: &[i64]) -> Vec<i64> {
        let mut h = vec![0; buckets()];
        for &d in durations {
            h[bucket(d)] += 1;
        }
        h
    }

    #[test]
    fn small_durations_are_exact() {
        let h = histogram(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 9]);
        assert_eq!(percentile(&h, 50), Some(5));
        assert_eq!(percentile(&h, 100), Some(9));
        assert_eq!(percentile(&histogram(&[0]), 99), Some(0));
    }

    #[test]
    fn percentiles_land_within_a_fifth_of_the_truth() {
        // 1..=5000 ms, one of each: the true pN is 50 * N.
        let all: Vec<i64> = (1..=5000).collect();
        let h = histogram(&all);
        for p in [50, 95, 99] {
            let truth = 50 * i64::from(p);
            let got = percentile(&h, p).unwrap();
            assert!((got - truth).abs() * 5 <= truth, "p{p}: {got} vs {truth}");
        }
    }

    #[test]
    fn nothing_counted_is_no_percentile_and_huge_durations_still_count() {
        assert_eq!(percentile(&vec![0; buckets()], 50), None);
        let h = histogram(&[10_000_000]);
        assert!(percentile(&h, 50).unwrap() >= 120_000);
    }

    #[test]
    fn merging_adds_bucket_by_bucket() {
        let mut sum = vec![0; 3];
        merge(&mut sum, &[1, 2, 3, 4]);
        merge(&mut sum, &[1, 0, 0, 0]);
        assert_eq!(sum, vec![2, 2, 3, 4]);
    }
}
