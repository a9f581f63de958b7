//! Rate limits (feature `stream-rate-limiting`): token buckets, one per client address for
//! requests and new streams, and one per WebSocket connection for the messages it publishes.
//!
//! A bucket holds up to `per_minute` tokens and refills at `per_minute` a minute; a request
//! takes one. The per-address table holds only addresses seen lately: a bucket that has
//! refilled completely says nothing a new one would not, so [`RateLimiter::sweep`] drops it, and
//! the table never holds more than [`MAX_ADDRESSES`] (a flood from more addresses than that is
//! refused until the sweep makes room).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The most addresses tracked at once.
pub const MAX_ADDRESSES: usize = 100_000;
/// How often full buckets are dropped.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// A token bucket.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket of `per_minute` tokens.
    pub fn full(per_minute: u64, now: Instant) -> Bucket {
        Bucket {
            tokens: per_minute as f64,
            at: now,
        }
    }

    /// Takes a token: `Err` with how long until one is there.
    pub fn take(&mut self, per_minute: u64, now: Instant) -> Result<(), Duration> {
        let capacity = per_minute as f64;
        let rate = capacity / 60.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if rate <= 0.0 {
            return Err(Duration::from_secs(60));
        }
        Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
    }

    /// Whether it would be full at `now` (it holds nothing worth keeping).
    fn is_full(&self, per_minute: u64, now: Instant) -> bool {
        let rate = per_minute as f64 / 60.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * rate >= per_minute as f64
    }
}

/// The buckets of client addresses.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: HashMap<IpAddr, Bucket>,
    next_sweep: Option<Instant>,
}

impl RateLimiter {
    /// Takes a token of `ip`'s bucket: `Err` with whole seconds to wait (at least 1).
    pub fn check(&mut self, ip: IpAddr, per_minute: u64, now: Instant) -> Result<(), u64> {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= MAX_ADDRESSES {
            self.sweep(per_minute, now);
            if self.buckets.len() >= MAX_ADDRESSES {
                return Err(SWEEP_EVERY.as_secs());
            }
        }
        if self.next_sweep.is_none() {
            self.next_sweep = now.checked_add(SWEEP_EVERY);
        }
        let bucket = self
            .buckets
            .entry(ip)
            .or_insert_with(|| Bucket::full(per_minute, now));
        bucket
            .take(per_minute, now)
            .map_err(|wait| wait.as_secs_f64().ceil().max(1.0) as u64)
    }

    /// When [`RateLimiter::sweep`] is due, if anything is tracked.
    pub fn next_sweep(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Drops the buckets that have refilled.
    pub fn sweep(&mut self, per_minute: u64, now: Instant) {
        self.buckets.retain(|_, b| !b.is_full(per_minute, now));
        self.next_sweep = if self.buckets.is_empty() {
            None
        } else {
            now.checked_add(SWEEP_EVERY)
        };
    }

    /// How many addresses are tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..60 {
            assert_eq!(limiter.check(ip, 60, t0), Ok(()));
        }
        assert_eq!(limiter.check(ip, 60, t0), Err(1));
        // One a second comes back.
        assert_eq!(
            limiter.check(ip, 60, t0 + Duration::from_millis(1000)),
            Ok(())
        );
        assert_eq!(
            limiter.check(ip, 60, t0 + Duration::from_millis(1100)),
            Err(1)
        );
        // Another address has its own bucket.
        assert_eq!(limiter.check("10.0.0.2".parse().unwrap(), 60, t0), Ok(()));
        // A slow rate says how long to wait in whole seconds.
        let slow: IpAddr = "10.0.0.3".parse().unwrap();
        assert_eq!(limiter.check(slow, 1, t0), Ok(()));
        assert_eq!(limiter.check(slow, 1, t0), Err(60));
    }

    #[test]
    fn refilled_buckets_are_swept_and_the_table_is_bounded() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::default();
        for i in 0..10u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            limiter.check(ip, 60, t0).unwrap();
        }
        assert_eq!(limiter.len(), 10);
        assert_eq!(limiter.next_sweep(), Some(t0 + SWEEP_EVERY));
        limiter.sweep(60, t0 + Duration::from_secs(2));
        assert!(limiter.is_empty() && limiter.next_sweep().is_none());
        // At the bound, a new address waits for the sweep unless it can make room.
        for i in 0..MAX_ADDRESSES as u32 {
            limiter
                .check(IpAddr::from(i.to_be_bytes()), 60, t0)
                .unwrap();
        }
        let newcomer = IpAddr::from(u32::MAX.to_be_bytes());
        assert_eq!(limiter.check(newcomer, 60, t0), Err(60));
        assert_eq!(
            limiter.check(newcomer, 60, t0 + Duration::from_secs(2)),
            Ok(())
        );
        assert_eq!(limiter.len(), 1);
    }
}
