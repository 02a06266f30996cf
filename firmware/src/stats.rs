//! Streaming min/max/mean/standard deviation, without a heap and without a clock.

/// Running statistics over a stream of non-negative samples.
///
/// Sums are kept in `f64`: inter-arrival times in microseconds over a long flow square to values
/// that `f32` cannot hold exactly. Minimum and maximum are single values, which `f32` holds to
/// seven digits (exactly up to 2^24: packet sizes, and gaps up to 16 s in microseconds); that
/// keeps a flow's five of these at 32 bytes each.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunningStats {
    n: u32,
    min: f32,
    max: f32,
    sum: f64,
    sum_sq: f64,
}

impl RunningStats {
    pub const fn new() -> Self {
        RunningStats { n: 0, min: 0.0, max: 0.0, sum: 0.0, sum_sq: 0.0 }
    }

    #[inline]
    pub fn push(&mut self, x: f64) {
        let xf = x as f32;
        if self.n == 0 {
            self.min = xf;
            self.max = xf;
        } else {
            if xf < self.min {
                self.min = xf;
            }
            if xf > self.max {
                self.max = xf;
            }
        }
        self.n = self.n.saturating_add(1);
        self.sum += x;
        self.sum_sq += x * x;
    }

    /// The statistics of both streams together.
    pub fn merged(&self, other: &RunningStats) -> RunningStats {
        match (self.n, other.n) {
            (0, _) => *other,
            (_, 0) => *self,
            _ => RunningStats {
                n: self.n.saturating_add(other.n),
                min: self.min.min(other.min),
                max: self.max.max(other.max),
                sum: self.sum + other.sum,
                sum_sq: self.sum_sq + other.sum_sq,
            },
        }
    }

    pub fn count(&self) -> u32 {
        self.n
    }
    pub fn sum(&self) -> f64 {
        self.sum
    }
    pub fn min(&self) -> f64 {
        f64::from(self.min)
    }
    pub fn max(&self) -> f64 {
        f64::from(self.max)
    }
    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum / f64::from(self.n)
        }
    }
    /// Population variance (what CICFlowMeter reports as `*_std` squared).
    pub fn variance(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let n = f64::from(self.n);
        let mean = self.sum / n;
        let var = self.sum_sq / n - mean * mean;
        if var > 0.0 {
            var
        } else {
            0.0
        }
    }
    pub fn std(&self) -> f64 {
        libm::sqrt(self.variance())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_running_stats() {
        let mut s = RunningStats::new();
        assert_eq!(s.mean(), 0.0);
        assert_eq!(s.std(), 0.0);
        for x in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0] {
            s.push(x);
        }
        assert_eq!(s.count(), 8);
        assert_eq!(s.min(), 2.0);
        assert_eq!(s.max(), 9.0);
        assert_eq!(s.mean(), 5.0);
        assert!((s.std() - 2.0).abs() < 1e-12);
    }
}
