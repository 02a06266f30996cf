//! Streaming min/max/mean/standard deviation, without a heap and without a clock.

/// Minimum, maximum, sum and sum of squares of a stream of non-negative samples: with the
/// stream's count, its mean and standard deviation.
///
/// The count is not kept here: each stream of a flow is counted already (a direction's payload
/// sizes by its packets, its gaps by one fewer), and a flow holds five of these, so a count each
/// would be 40 bytes a flow (4 MB at 100,000 flows). The reader passes it in.
///
/// Sums are kept in `f64`: inter-arrival times in microseconds over a long flow square to values
/// that `f32` cannot hold exactly. Minimum and maximum are single values, which `f32` holds to
/// seven digits (exactly up to 2^24: packet sizes, and gaps up to 16 s in microseconds). An empty
/// stream has a minimum above its maximum and reads 0 for both.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    min: f32,
    max: f32,
    sum: f64,
    sum_sq: f64,
}

impl Default for Moments {
    fn default() -> Self {
        Moments::new()
    }
}

impl Moments {
    pub const fn new() -> Self {
        Moments { min: f32::INFINITY, max: f32::NEG_INFINITY, sum: 0.0, sum_sq: 0.0 }
    }

    #[inline]
    pub fn push(&mut self, x: f64) {
        let xf = x as f32;
        if xf < self.min {
            self.min = xf;
        }
        if xf > self.max {
            self.max = xf;
        }
        self.sum += x;
        self.sum_sq += x * x;
    }

    /// The moments of both streams together.
    pub fn merged(&self, other: &Moments) -> Moments {
        Moments {
            min: self.min.min(other.min),
            max: self.max.max(other.max),
            sum: self.sum + other.sum,
            sum_sq: self.sum_sq + other.sum_sq,
        }
    }

    fn is_empty(&self) -> bool {
        self.min > self.max
    }
    pub fn sum(&self) -> f64 {
        self.sum
    }
    pub fn min(&self) -> f64 {
        if self.is_empty() {
            0.0
        } else {
            f64::from(self.min)
        }
    }
    pub fn max(&self) -> f64 {
        if self.is_empty() {
            0.0
        } else {
            f64::from(self.max)
        }
    }
    /// The mean of the `n` samples pushed.
    pub fn mean(&self, n: u32) -> f64 {
        if n == 0 {
            0.0
        } else {
            self.sum / f64::from(n)
        }
    }
    /// Population variance of the `n` samples pushed (what CICFlowMeter reports as `*_std`
    /// squared).
    pub fn variance(&self, n: u32) -> f64 {
        if n < 2 {
            return 0.0;
        }
        let n = f64::from(n);
        let mean = self.sum / n;
        let var = self.sum_sq / n - mean * mean;
        if var > 0.0 {
            var
        } else {
            0.0
        }
    }
    pub fn std(&self, n: u32) -> f64 {
        libm::sqrt(self.variance(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_moments() {
        let mut s = Moments::new();
        assert_eq!((s.min(), s.max(), s.mean(0), s.std(0)), (0.0, 0.0, 0.0, 0.0));
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        for x in xs {
            s.push(x);
        }
        let n = xs.len() as u32;
        assert_eq!(s.min(), 2.0);
        assert_eq!(s.max(), 9.0);
        assert_eq!(s.sum(), 40.0);
        assert_eq!(s.mean(n), 5.0);
        assert!((s.std(n) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn test_merged_with_empty_and_zero_samples() {
        let mut a = Moments::new();
        a.push(0.0);
        let empty = Moments::new();
        assert_eq!(a.merged(&empty), a);
        assert_eq!(empty.merged(&a), a);
        assert_eq!((a.min(), a.max()), (0.0, 0.0));
        let mut b = Moments::new();
        b.push(3.0);
        b.push(1.0);
        let ab = a.merged(&b);
        assert_eq!((ab.min(), ab.max(), ab.sum()), (0.0, 3.0, 4.0));
        assert_eq!(ab.mean(3), 4.0 / 3.0);
    }
}
