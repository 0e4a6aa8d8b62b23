//! An identity's last minute or so of activity, for the detectors that ask
//! "what is it doing now" rather than "is this request unusual": how many
//! requests, distinct objects and distinct endpoints per minute, how many
//! failed, and whether it walks object ids in sequence. Scrapers, BOLA
//! walks and enumeration show here at any speed; a profile's per-request
//! surprise does not see them once each request looks ordinary.
//!
//! Distinct counts use linear counting (a bitmap of hashed ids), so the
//! record has a fixed size (75 bytes) whatever the identity does. The
//! current minute and the one before give a sliding one-minute estimate.

use super::stats::Moments;
use crate::engine::codec::{Reader, Writer};
use crate::engine::features::ObjectRef;

/// Bits of the distinct-objects bitmap: about 600 distinct objects a minute
/// before it saturates, far past what scoring needs.
const OBJECT_BITS: f64 = 128.0;
const ROUTE_BITS: f64 = 32.0;
/// A walk step: the next id on the same route within this distance, in the
/// same direction.
const STEP_MAX: u64 = 3;
pub const ENCODED: usize = 8 + 4 + 2 + 2 + 16 + 4 + 8 + 4 + 8 + 2 + 1 + 12 + 4;

/// One minute's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Minute {
    pub requests: u16,
    pub objects: u16,
    pub routes: u16,
    pub fails: u16,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Activity {
    /// The identity's first request (0: none yet): its age.
    pub first_ms: u64,
    /// The current minute (ms / 60 000) and its counts.
    pub minute: u32,
    pub requests: u16,
    pub fails: u16,
    pub objects: u128,
    pub routes: u32,
    /// The minute before, totalled.
    pub prev: Minute,
    /// The last numbered object, the route it was on, the sequential run
    /// that led to it and its direction (+1 up, -1 down, 0 none yet).
    pub last_route: u32,
    pub last_number: u64,
    pub run: u16,
    pub direction: i8,
    /// ln(1 + distinct objects) per active minute: this identity's usual,
    /// learned at the least weight its minute's decisions gave.
    pub usual_objects: Moments,
    /// The least learning weight among this minute's requests.
    pub min_weight: f32,
}

/// What the detectors read: per-minute rates over the last sliding minute.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub requests: f64,
    pub objects: f64,
    pub routes: f64,
    pub fails: f64,
    pub run: u16,
    pub age_ms: u64,
    /// The identity's usual distinct objects rest on enough active minutes
    /// for its own profile to judge them.
    pub objects_known: bool,
}

/// Active minutes an identity's usual needs before its own profile judges
/// its objects (before that, a young identity's are the population's to judge).
pub const OBJECTS_MIN_MINUTES: f32 = 2.0;

fn distinct(bits_set: u32, m: f64) -> f64 {
    let zeros = m - f64::from(bits_set);
    if zeros <= 0.0 {
        m * m.ln()
    } else {
        -m * (zeros / m).ln()
    }
}

fn saturating_u16(x: f64) -> u16 {
    x.round().clamp(0.0, f64::from(u16::MAX)) as u16
}

impl Activity {
    fn this_minute(&self) -> Minute {
        Minute {
            requests: self.requests,
            objects: saturating_u16(distinct(self.objects.count_ones(), OBJECT_BITS)),
            routes: saturating_u16(distinct(self.routes.count_ones(), ROUTE_BITS)),
            fails: self.fails,
        }
    }

    /// Records one request at `time_ms` on `route` naming `object`. Returns
    /// the minute it closed, if this request opened a new one (an active
    /// minute: one with requests), with the least learning weight its
    /// requests' decisions gave.
    pub fn record(&mut self, time_ms: u64, route: u32, object: Option<ObjectRef>) -> Option<(Minute, f32)> {
        if self.first_ms == 0 {
            self.first_ms = time_ms.max(1);
            self.min_weight = 1.0;
        }
        let minute = (time_ms / 60_000) as u32;
        let mut closed = None;
        if minute > self.minute {
            let done = self.this_minute();
            if done.requests > 0 {
                let weight = if self.min_weight.is_finite() { self.min_weight.clamp(0.0, 1.0) } else { 0.0 };
                closed = Some((done, weight));
                self.usual_objects.push_weighted(f64::from(done.objects).ln_1p(), weight);
            }
            self.prev = if minute == self.minute.wrapping_add(1) { done } else { Minute::default() };
            (self.minute, self.requests, self.fails, self.objects, self.routes) = (minute, 0, 0, 0, 0);
            self.min_weight = 1.0;
        }
        // A request from the past (another worker's, merged late) counts in the current minute.
        self.requests = self.requests.saturating_add(1);
        self.routes |= 1u32 << (route % 32);
        if let Some(o) = object {
            self.objects |= 1u128 << (o.hash % 128);
            if let Some(n) = o.number {
                let step = n.abs_diff(self.last_number);
                let direction = if n > self.last_number { 1 } else { -1 };
                let continues = self.last_route == route && (1..=STEP_MAX).contains(&step) && (self.direction == 0 || self.direction == direction);
                if continues {
                    self.run = self.run.saturating_add(1);
                    self.direction = direction;
                } else if !(self.last_route == route && step == 0) {
                    // The same object again keeps the run; anything else starts over.
                    (self.run, self.direction) = (0, 0);
                }
                (self.last_route, self.last_number) = (route, n);
            }
        }
        closed
    }

    /// A failed answer (401/403/404) to this identity.
    pub fn failed(&mut self) {
        self.fails = self.fails.saturating_add(1);
    }

    /// The least learning weight of the minute's requests so far.
    pub fn weighed(&mut self, weight: f32) {
        self.min_weight = self.min_weight.min(weight);
    }

    /// The last sliding minute at `time_ms`: this minute's counts plus the
    /// share of the previous one that the window still covers.
    pub fn summary(&self, time_ms: u64) -> Summary {
        // Another worker's event may have opened the next minute already.
        let time_ms = time_ms.max(u64::from(self.minute) * 60_000);
        let into = (time_ms % 60_000) as f64 / 60_000.0;
        let minute = (time_ms / 60_000) as u32;
        let (now, prev) = if minute == self.minute {
            (self.this_minute(), self.prev)
        } else if minute == self.minute.wrapping_add(1) {
            (Minute::default(), self.this_minute())
        } else {
            (Minute::default(), Minute::default())
        };
        let slide = |a: u16, b: u16| f64::from(a) + f64::from(b) * (1.0 - into);
        Summary {
            requests: slide(now.requests, prev.requests),
            objects: slide(now.objects, prev.objects),
            routes: slide(now.routes, prev.routes),
            fails: slide(now.fails, prev.fails),
            run: self.run,
            age_ms: if self.first_ms == 0 { 0 } else { time_ms.saturating_sub(self.first_ms) },
            objects_known: self.usual_objects.w >= OBJECTS_MIN_MINUTES,
        }
    }

    pub fn encode(&self, w: &mut Writer) {
        w.u64(self.first_ms);
        w.u32(self.minute);
        w.u16(self.requests);
        w.u16(self.fails);
        w.u64(self.objects as u64);
        w.u64((self.objects >> 64) as u64);
        w.u32(self.routes);
        for x in [self.prev.requests, self.prev.objects, self.prev.routes, self.prev.fails] {
            w.u16(x);
        }
        w.u32(self.last_route);
        w.u64(self.last_number);
        w.u16(self.run);
        w.u8(self.direction as u8);
        w.f32(self.usual_objects.w);
        w.f32(self.usual_objects.mean);
        w.f32(self.usual_objects.var);
        w.f32(self.min_weight);
    }

    pub fn decode(r: &mut Reader) -> Option<Activity> {
        let mut a = Activity { first_ms: r.u64()?, minute: r.u32()?, requests: r.u16()?, fails: r.u16()?, ..Activity::default() };
        let (lo, hi) = (r.u64()?, r.u64()?);
        a.objects = u128::from(lo) | (u128::from(hi) << 64);
        a.routes = r.u32()?;
        a.prev = Minute { requests: r.u16()?, objects: r.u16()?, routes: r.u16()?, fails: r.u16()? };
        a.last_route = r.u32()?;
        a.last_number = r.u64()?;
        a.run = r.u16()?;
        a.direction = (r.u8()? as i8).clamp(-1, 1);
        a.usual_objects = Moments { w: r.f32()?, mean: r.f32()?, var: r.f32()? };
        a.min_weight = r.f32()?;
        let m = &a.usual_objects;
        (m.w.is_finite() && m.mean.is_finite() && m.var.is_finite() && a.min_weight.is_finite()).then_some(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(i: u64) -> Option<ObjectRef> {
        // Spread like a keyed hash would.
        Some(ObjectRef { hash: (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32, number: Some(i) })
    }

    #[test]
    fn distinct_objects_and_sequential_walks_are_counted() {
        let mut a = Activity::default();
        let t0 = 60_000 * 1_000;
        for i in 0..40u64 {
            a.record(t0 + i * 500, 7, obj(1_000 + i));
        }
        let s = a.summary(t0 + 20_000);
        assert!((30.0..50.0).contains(&s.objects), "{s:?}");
        assert_eq!(s.run, 39);
        assert_eq!(s.requests, 40.0);
        // A browse of a few objects, out of order, is not a walk.
        let mut b = Activity::default();
        for (k, id) in [17u64, 4_002, 17, 98, 4_003, 17].iter().enumerate() {
            b.record(t0 + k as u64 * 3_000, 7, obj(*id));
        }
        let s = b.summary(t0 + 20_000);
        assert!(s.run <= 1 && s.objects < 6.0, "{s:?}");
    }

    #[test]
    fn the_window_slides_and_closed_minutes_teach_the_usual() {
        let mut a = Activity::default();
        let t0 = 60_000 * 2_000;
        for i in 0..10u64 {
            assert!(a.record(t0 + i * 1_000, 1, obj(i * 50)).is_none());
        }
        a.weighed(1.0);
        let (closed, weight) = a.record(t0 + 60_000, 1, None).unwrap();
        assert_eq!(weight, 1.0);
        assert_eq!(closed.requests, 10);
        assert!((8..=12).contains(&closed.objects), "{closed:?}");
        assert_eq!(a.usual_objects.w, 1.0);
        // Half way into the next minute, half the previous one still counts.
        let s = a.summary(t0 + 90_000);
        assert!((5.5..=7.5).contains(&s.requests), "{s:?}");
        // A long pause leaves nothing behind.
        assert_eq!(a.summary(t0 + 600_000).requests, 0.0);
    }

    #[test]
    fn encoding_round_trips() {
        let mut a = Activity::default();
        for i in 0..70u64 {
            a.record(60_000 * 5 + i * 900, (i % 3) as u32, obj(i));
            a.failed();
        }
        let mut out = Vec::new();
        a.encode(&mut Writer(&mut out));
        assert_eq!(out.len(), ENCODED);
        assert_eq!(Activity::decode(&mut Reader(&out)), Some(a));
    }
}
