//! Streaming min/max/mean/standard deviation, without a heap and without a clock.

/// An unsigned integer a [`Moments`] keeps its extremes or its sum in.
pub trait Int: Copy + PartialOrd + Into<u64> + TryFrom<u64> {
    const MAX: Self;
    const ZERO: Self;
    /// `x`, or `MAX` when it does not fit.
    fn saturating(x: u64) -> Self {
        Self::try_from(x).unwrap_or(Self::MAX)
    }
}

impl Int for u16 {
    const MAX: Self = u16::MAX;
    const ZERO: Self = 0;
}
impl Int for u32 {
    const MAX: Self = u32::MAX;
    const ZERO: Self = 0;
}
impl Int for u64 {
    const MAX: Self = u64::MAX;
    const ZERO: Self = 0;
}

/// Minimum, maximum and sum of a stream of non-negative integer samples, exactly, and the sum
/// of squared deviations from its running mean (Welford's): with the stream's count, its mean
/// and standard deviation.
///
/// `T` holds a sample (the extremes), `S` the sum; both saturate. A flow keeps five of these:
/// its directions' payload sizes (`u16` samples: what an IP packet can carry; `u64` sum) and
/// gaps between packets in microseconds (`u32` samples and sum: a flow's gaps add up to its
/// duration, which [`MAX_ACTIVE_TIMEOUT`](crate::flow::MAX_ACTIVE_TIMEOUT) keeps below
/// `u32::MAX` microseconds), 16 bytes each. Sums and sums of squares in `f64` were 24.
///
/// The spread is kept in `f32`, like the features it feeds: each step rounds it to 24 bits, and
/// a step adding less than half its last bit adds nothing, so a long stream of samples near its
/// mean reads low: a million packet sizes spread over 0-1,500 give a variance 5e-4 below the
/// exact one (`test_the_spread_holds_over_a_long_stream_of_any_samples`), a thousand 1e-6.
/// Each step's increment comes from the exact sum without cancellation (a sum of squares less
/// the square of the sum, in `f64`, lost a small spread of large samples entirely).
///
/// The count is not kept here: each stream of a flow is counted already (a direction's payload
/// sizes by its packets, its gaps by one fewer), so it is passed in. An empty stream has a
/// minimum above its maximum and reads 0 for both.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments<T, S> {
    min: T,
    max: T,
    sum: S,
    m2: f32,
}

/// A direction's payload sizes.
pub type Sizes = Moments<u16, u64>;
/// Gaps between packets, microseconds.
pub type Gaps = Moments<u32, u32>;

impl<T: Int, S: Int> Default for Moments<T, S> {
    fn default() -> Self {
        Moments::new()
    }
}

impl<T: Int, S: Int> Moments<T, S> {
    pub const fn new() -> Self {
        Moments { min: T::MAX, max: T::ZERO, sum: S::ZERO, m2: 0.0 }
    }

    /// Add sample `x`, the `n`th of the stream (`n` counts it).
    #[inline]
    pub fn push(&mut self, x: u64, n: u32) {
        let t = T::saturating(x);
        if t < self.min {
            self.min = t;
        }
        if t > self.max {
            self.max = t;
        }
        let before: u64 = self.sum.into();
        if n > 1 {
            // x less the mean before it, times x less the mean after it: with s the sum before,
            // (x - s/(n-1)) * (x - (s+x)/n) = ((n-1)x - s)^2 / ((n-1) n).
            let k = f64::from(n - 1);
            let d = k * x as f64 - before as f64;
            self.m2 = (f64::from(self.m2) + d * d / (k * f64::from(n))) as f32;
        }
        self.sum = S::saturating(before.saturating_add(x));
    }

    /// The moments of both streams together, of `n` and `n_other` samples.
    pub fn merged(&self, other: &Self, n: u32, n_other: u32) -> Self {
        if n == 0 {
            return *other;
        }
        if n_other == 0 {
            return *self;
        }
        let (a, b) = (f64::from(n), f64::from(n_other));
        let d = self.sum() / a - other.sum() / b;
        let (sa, sb): (u64, u64) = (self.sum.into(), other.sum.into());
        Moments {
            min: if other.min < self.min { other.min } else { self.min },
            max: if other.max > self.max { other.max } else { self.max },
            sum: S::saturating(sa.saturating_add(sb)),
            m2: (f64::from(self.m2) + f64::from(other.m2) + d * d * a * b / (a + b)) as f32,
        }
    }

    fn is_empty(&self) -> bool {
        self.min > self.max
    }
    pub fn sum(&self) -> f64 {
        let s: u64 = self.sum.into();
        s as f64
    }
    pub fn min(&self) -> f64 {
        if self.is_empty() {
            0.0
        } else {
            let m: u64 = self.min.into();
            m as f64
        }
    }
    pub fn max(&self) -> f64 {
        if self.is_empty() {
            0.0
        } else {
            let m: u64 = self.max.into();
            m as f64
        }
    }
    /// The mean of the `n` samples pushed.
    pub fn mean(&self, n: u32) -> f64 {
        if n == 0 {
            0.0
        } else {
            self.sum() / f64::from(n)
        }
    }
    /// Population variance of the `n` samples pushed (what CICFlowMeter reports as `*_std`
    /// squared).
    pub fn variance(&self, n: u32) -> f64 {
        if n < 2 {
            return 0.0;
        }
        f64::from(self.m2).max(0.0) / f64::from(n)
    }
    pub fn std(&self, n: u32) -> f64 {
        libm::sqrt(self.variance(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream<T: Int, S: Int>(xs: &[u64]) -> Moments<T, S> {
        let mut s = Moments::new();
        for (i, &x) in xs.iter().enumerate() {
            s.push(x, i as u32 + 1);
        }
        s
    }

    /// Population variance of `xs`, exactly (in 128-bit integers) then rounded.
    fn exact_variance(xs: &[u64]) -> f64 {
        let n = xs.len() as u128;
        let sum: u128 = xs.iter().map(|&x| u128::from(x)).sum();
        let sq: u128 = xs.iter().map(|&x| u128::from(x) * u128::from(x)).sum();
        (n * sq - sum * sum) as f64 / (n * n) as f64
    }

    #[test]
    fn test_moments() {
        let s = Gaps::new();
        assert_eq!((s.min(), s.max(), s.mean(0), s.std(0)), (0.0, 0.0, 0.0, 0.0));
        let xs = [2, 4, 4, 4, 5, 5, 7, 9];
        let s: Gaps = stream(&xs);
        let n = xs.len() as u32;
        assert_eq!(s.min(), 2.0);
        assert_eq!(s.max(), 9.0);
        assert_eq!(s.sum(), 40.0);
        assert_eq!(s.mean(n), 5.0);
        assert_eq!(s.std(n), 2.0);
    }

    /// Gaps of a second give or take a microsecond: a sum of squares (1e12 each) less the
    /// square of the sum, in f64, lost the spread; the running deviations keep it.
    #[test]
    fn test_a_small_spread_of_large_samples_is_kept() {
        let xs: std::vec::Vec<u64> = (0..4_000).map(|i| 1_000_000 + (i % 3)).collect();
        let s: Gaps = stream(&xs);
        let n = xs.len() as u32;
        let want = exact_variance(&xs);
        assert!((s.variance(n) - want).abs() <= want * 1e-4, "{} against {want}", s.variance(n));
        assert_eq!(s.sum(), xs.iter().sum::<u64>() as f64);
    }

    #[test]
    fn test_the_spread_holds_over_a_long_stream_of_any_samples() {
        // A generator of the numerical recipes, for spread-out sizes of a long flow.
        let mut r = 12345u64;
        let xs: std::vec::Vec<u64> = (0..1_000_000)
            .map(|_| {
                r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (r >> 33) % 1500
            })
            .collect();
        let s: Sizes = stream(&xs);
        let want = exact_variance(&xs);
        let got = s.variance(xs.len() as u32);
        // Below: steps of less than half the spread's last bit are lost (see the type's doc).
        assert!(got <= want && got >= want * (1.0 - 1e-3), "{got} against {want}");
        let head: Sizes = stream(&xs[..1000]);
        let want = exact_variance(&xs[..1000]);
        let got = head.variance(1000);
        assert!((got - want).abs() <= want * 1e-6, "{got} against {want}");
    }

    #[test]
    fn test_merged_is_the_streams_pushed_as_one() {
        let a = [3, 70, 70, 1500, 0];
        let b = [40, 40, 9000];
        let all: std::vec::Vec<u64> = a.iter().chain(&b).copied().collect();
        let (sa, sb, sall): (Sizes, Sizes, Sizes) = (stream(&a), stream(&b), stream(&all));
        let m = sa.merged(&sb, 5, 3);
        assert_eq!((m.min(), m.max(), m.sum()), (sall.min(), sall.max(), sall.sum()));
        let (got, want) = (m.variance(8), exact_variance(&all));
        assert!((got - want).abs() <= want * 1e-6, "{got} against {want}");
        assert!((sall.variance(8) - want).abs() <= want * 1e-6);
    }

    #[test]
    fn test_merged_with_empty_and_zero_samples() {
        let a: Sizes = stream(&[0]);
        let empty = Sizes::new();
        assert_eq!(a.merged(&empty, 1, 0), a);
        assert_eq!(empty.merged(&a, 0, 1), a);
        assert_eq!((a.min(), a.max()), (0.0, 0.0));
        let b: Sizes = stream(&[3, 1]);
        let ab = a.merged(&b, 1, 2);
        assert_eq!((ab.min(), ab.max(), ab.sum()), (0.0, 3.0, 4.0));
        assert_eq!(ab.mean(3), 4.0 / 3.0);
    }

    /// A sample too large for its extremes reads as their largest value; the sum stays exact.
    #[test]
    fn test_extremes_saturate_and_the_sum_does_not() {
        let s: Sizes = stream(&[70_000, 10]);
        assert_eq!((s.min(), s.max(), s.sum()), (10.0, 65_535.0, 70_010.0));
        let g: Gaps = stream(&[u64::from(u32::MAX), 5]);
        assert_eq!(g.sum(), f64::from(u32::MAX), "a gap sum saturates");
    }
}
