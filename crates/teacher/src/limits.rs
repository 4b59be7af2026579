//! One endpoint's limits in this process: in-flight slots, requests/min (governor, smooth, no
//! burst), tokens/min budgets (total, input, output; [`TokenBucket`]s with refunds), a pause
//! the server asked for (Retry-After, `x-ratelimit-reset-*`), this process's share of a
//! fleet-wide limit, and an AIMD factor that halves on 429 and recovers step by step.
//!
//! Effective rate = configured limit x share x AIMD factor (requests also x 0.99, so timing
//! noise between client and server cannot push a minute over the limit).

use crate::bucket::TokenBucket;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reasonrec_core::settings::EndpointSettings;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

const AIMD_FLOOR: f64 = 0.05;
const AIMD_STEP: f64 = 0.01;

fn load(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Ordering::Relaxed))
}

fn store(a: &AtomicU64, v: f64) {
    a.store(v.to_bits(), Ordering::Relaxed);
}

/// What one request reserved; settled with the real usage after the answer.
#[derive(Debug)]
pub struct Admission {
    input: f64,
    output: f64,
    _slot: Option<OwnedSemaphorePermit>,
}

#[derive(Debug)]
pub struct EndpointLimiter {
    endpoint: EndpointSettings,
    slots: Arc<Semaphore>,
    requests: RwLock<Option<Arc<DefaultDirectRateLimiter>>>,
    tokens: Option<TokenBucket>,
    input_tokens: Option<TokenBucket>,
    output_tokens: Option<TokenBucket>,
    share: AtomicU64,
    aimd: AtomicU64,
    /// Factor the limiters were last built with (rebuilt when it moves by more than 2 %).
    applied: AtomicU64,
    last_cut: Mutex<Option<Instant>>,
    paused_until: Mutex<Option<Instant>>,
}

fn bucket(per_minute: u32) -> Option<TokenBucket> {
    (per_minute > 0).then(|| TokenBucket::per_minute(f64::from(per_minute)))
}

fn request_limiter(per_minute: u32, factor: f64) -> Option<Arc<DefaultDirectRateLimiter>> {
    if per_minute == 0 {
        return None;
    }
    let rate = (f64::from(per_minute) * factor * 0.99).max(0.01);
    let period = Duration::from_secs_f64(60.0 / rate);
    Quota::with_period(period).map(|q| Arc::new(RateLimiter::direct(q.allow_burst(NonZeroU32::MIN))))
}

impl EndpointLimiter {
    pub fn new(endpoint: &EndpointSettings) -> Self {
        Self {
            endpoint: endpoint.clone(),
            slots: Arc::new(Semaphore::new(endpoint.max_in_flight.max(1))),
            requests: RwLock::new(request_limiter(endpoint.requests_per_minute, 1.0)),
            tokens: bucket(endpoint.tokens_per_minute),
            input_tokens: bucket(endpoint.input_tokens_per_minute),
            output_tokens: bucket(endpoint.output_tokens_per_minute),
            share: AtomicU64::new(1.0f64.to_bits()),
            aimd: AtomicU64::new(1.0f64.to_bits()),
            applied: AtomicU64::new(1.0f64.to_bits()),
            last_cut: Mutex::new(None),
            paused_until: Mutex::new(None),
        }
    }

    /// The factor applied to every configured limit: share x AIMD.
    pub fn factor(&self) -> f64 {
        load(&self.share) * load(&self.aimd)
    }

    pub fn share(&self) -> f64 {
        load(&self.share)
    }

    fn apply(&self, force: bool) {
        let f = self.factor();
        let before = load(&self.applied);
        if !force && (f - before).abs() <= 0.02 * before.max(f) {
            return;
        }
        store(&self.applied, f);
        if let Ok(mut r) = self.requests.write() {
            *r = request_limiter(self.endpoint.requests_per_minute, f);
        }
        for (b, limit) in [
            (&self.tokens, self.endpoint.tokens_per_minute),
            (&self.input_tokens, self.endpoint.input_tokens_per_minute),
            (&self.output_tokens, self.endpoint.output_tokens_per_minute),
        ] {
            if let Some(b) = b {
                b.set_per_minute(f64::from(limit) * f);
            }
        }
    }

    /// This process's share of the endpoint's limits (1 / live workers, from the leases).
    pub fn set_share(&self, share: f64) {
        let share = share.clamp(0.001, 1.0);
        if (share - load(&self.share)).abs() > f64::EPSILON {
            store(&self.share, share);
            self.apply(true);
        }
    }

    /// A 429: halve the local rate (at most once a second, however many requests saw it).
    pub fn on_rate_limited(&self) {
        let now = Instant::now();
        if let Ok(mut last) = self.last_cut.lock() {
            if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
                return;
            }
            *last = Some(now);
        }
        store(&self.aimd, (load(&self.aimd) * 0.5).max(AIMD_FLOOR));
        self.apply(true);
    }

    /// A success: recover the local rate additively.
    pub fn on_success(&self) {
        let a = load(&self.aimd);
        if a < 1.0 {
            store(&self.aimd, (a + AIMD_STEP).min(1.0));
            self.apply(false);
        }
    }

    pub fn aimd(&self) -> f64 {
        load(&self.aimd)
    }

    /// No request leaves before `until` (the server said so).
    pub fn pause_for(&self, d: Duration) {
        let until = Instant::now() + d;
        if let Ok(mut p) = self.paused_until.lock()
            && p.is_none_or(|t| t < until)
        {
            *p = Some(until);
        }
    }

    /// Waits for a slot, the pause, the request rate and the token budgets; reserves
    /// `prompt_tokens + max_tokens`.
    pub async fn admit(&self, prompt_tokens: u32, max_tokens: u32) -> Admission {
        // The semaphore is never closed, so this always yields a slot.
        let slot = self.slots.clone().acquire_owned().await.ok();
        loop {
            let wait =
                self.paused_until.lock().ok().and_then(|p| *p).and_then(|t| t.checked_duration_since(Instant::now()));
            match wait {
                Some(w) if !w.is_zero() => tokio::time::sleep(w).await,
                _ => break,
            }
        }
        let limiter = self.requests.read().ok().and_then(|r| r.clone());
        if let Some(l) = limiter {
            l.until_ready().await;
        }
        let (input, output) = (f64::from(prompt_tokens), f64::from(max_tokens));
        if let Some(b) = &self.tokens {
            b.acquire(input + output).await;
        }
        if let Some(b) = &self.input_tokens {
            b.acquire(input).await;
        }
        if let Some(b) = &self.output_tokens {
            b.acquire(output).await;
        }
        Admission { input, output, _slot: slot }
    }

    /// Corrects the reservation with what was really used (0, 0 when nothing was served).
    pub fn settle(&self, a: Admission, input_used: u32, output_used: u32) {
        let correct = |b: &Option<TokenBucket>, reserved: f64, used: f64| {
            if let Some(b) = b {
                if used < reserved {
                    b.refund(reserved - used);
                } else {
                    b.charge(used - reserved);
                }
            }
        };
        let (iu, ou) = (f64::from(input_used), f64::from(output_used));
        correct(&self.tokens, a.input + a.output, iu + ou);
        correct(&self.input_tokens, a.input, iu);
        correct(&self.output_tokens, a.output, ou);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aimd_halves_once_per_second_and_recovers_stepwise() {
        let l = EndpointLimiter::new(&EndpointSettings { requests_per_minute: 600, ..EndpointSettings::default() });
        l.on_rate_limited();
        l.on_rate_limited(); // same second: ignored
        assert!((l.aimd() - 0.5).abs() < 1e-9);
        for _ in 0..10 {
            l.on_success();
        }
        assert!((l.aimd() - 0.6).abs() < 1e-9);
        l.set_share(0.25);
        assert!((l.factor() - 0.15).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_request() {
        let l = EndpointLimiter::new(&EndpointSettings::default());
        l.pause_for(Duration::from_secs(3));
        let t0 = tokio::time::Instant::now();
        let a = l.admit(10, 10).await;
        assert!(t0.elapsed() >= Duration::from_secs(3));
        l.settle(a, 10, 5);
    }
}
