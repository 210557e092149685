//! The server's clock as seen from this page: an offset estimated from PING timestamps so that
//! countdowns are right on a viewer whose own clock is off.

/// PING samples kept; the estimate follows a changed local clock within this many pings.
const SAMPLES: usize = 5;

/// Estimates `server time − local time` in milliseconds.
///
/// A PING stamped `ts` by the server arrives after some network delay, so `ts − arrival` is the
/// true offset minus that delay: never above the truth. The largest recent sample is therefore
/// the one with the least delay and the best estimate.
#[derive(Debug, Default, Clone)]
pub struct ClockOffset {
    samples: [f64; SAMPLES],
    count: usize,
    next: usize,
}

impl ClockOffset {
    /// Records one PING: `server_ms` is its `ts`, `local_ms` the local time it arrived
    /// (both milliseconds since the Unix epoch). Non-finite values (an unparsable `ts`) are ignored.
    pub fn add_sample(&mut self, server_ms: f64, local_ms: f64) {
        let sample = server_ms - local_ms;
        if !sample.is_finite() {
            return;
        }
        self.samples[self.next] = sample;
        self.next = (self.next + 1) % SAMPLES;
        self.count = (self.count + 1).min(SAMPLES);
    }

    /// The offset to add to local time to get server time; 0 before the first PING.
    pub fn offset_ms(&self) -> f64 {
        self.samples
            .iter()
            .take(self.count)
            .copied()
            .reduce(f64::max)
            .unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_least_delayed_sample_and_forgets_old_ones() {
        let mut clock = ClockOffset::default();
        assert_eq!(clock.offset_ms(), 0.0);
        clock.add_sample(10_000.0, 9_000.0);
        clock.add_sample(11_000.0, 10_050.0);
        assert_eq!(clock.offset_ms(), 1_000.0);
        // The local clock jumps forward by an hour: after five pings the old estimate is gone.
        for ping in 0..5 {
            clock.add_sample(20_000.0 + f64::from(ping), 3_620_000.0 + f64::from(ping));
        }
        assert_eq!(clock.offset_ms(), -3_600_000.0);
        clock.add_sample(f64::NAN, 1.0);
        assert_eq!(clock.offset_ms(), -3_600_000.0);
    }
}
