//! Routes many established identities take up at once: a release, not an
//! oddity of each of them. When a new version moves everybody to
//! `/api/v2/...`, every profile finds the new endpoints surprising and the
//! recent mix changed; one identity alone on a route new to it is worth
//! noticing, twenty at once are the application changing.
//!
//! Per worker (each sees about its share of the adopters), a fixed table of
//! `SLOTS` routes, each with a 64-bit linear-counting bitmap of the distinct
//! established identities for whom the route was new, over a window of
//! `WINDOW_MS`. No host call, no allocation after start-up.

const SLOTS: usize = 64;
const WINDOW_MS: u64 = 10 * 60_000;
/// Distinct adopters (on this worker, in the window) that make a release.
pub const RELEASE_AT: f64 = 5.0;
/// What the endpoint and mix components of an adopted route still count.
pub const ADOPTED_SHARE: f64 = 0.3;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    route: u32,
    since_ms: u64,
    adopters: u64,
}

pub struct Adoption {
    slots: [Slot; SLOTS],
}

impl Default for Adoption {
    fn default() -> Self {
        Adoption { slots: [Slot::default(); SLOTS] }
    }
}

fn distinct(bits: u64) -> f64 {
    let zeros = f64::from(64 - bits.count_ones());
    if zeros == 0.0 { 64.0 * 64f64.ln() } else { -64.0 * (zeros / 64.0).ln() }
}

impl Adoption {
    fn slot(&self, route: u32) -> Option<&Slot> {
        self.slots.get(route as usize % SLOTS).filter(|s| s.route == route && s.adopters != 0)
    }

    /// How many established identities took `route` up lately (on this worker).
    pub fn adopters(&self, route: u32, now_ms: u64) -> f64 {
        match self.slot(route) {
            Some(s) if now_ms.saturating_sub(s.since_ms) <= WINDOW_MS => distinct(s.adopters),
            _ => 0.0,
        }
    }

    /// `identity` found `route` new to it. A slot held by another route is
    /// taken over once its window has passed or it has fewer adopters.
    pub fn adopted(&mut self, route: u32, identity: u64, now_ms: u64) {
        let Some(s) = self.slots.get_mut(route as usize % SLOTS) else { return };
        let stale = now_ms.saturating_sub(s.since_ms) > WINDOW_MS;
        if s.route != route {
            if !stale && s.adopters.count_ones() > 1 {
                return;
            }
            *s = Slot { route, since_ms: now_ms, adopters: 0 };
        } else if stale {
            (s.since_ms, s.adopters) = (now_ms, 0);
        }
        s.adopters |= 1u64 << (identity.rotate_left(17) % 64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_identities_on_one_new_route_are_a_release_and_one_is_not() {
        let mut a = Adoption::default();
        let t = 1_000_000;
        a.adopted(7, 0x1234_5678_9abc_def0, t);
        assert!(a.adopters(7, t) < RELEASE_AT);
        for i in 0..20u64 {
            a.adopted(7, i.wrapping_mul(0x9E37_79B9_7F4A_7C15), t + i * 1_000);
        }
        assert!(a.adopters(7, t + 30_000) >= RELEASE_AT);
        // The same identity again and again is still one.
        let mut b = Adoption::default();
        for i in 0..50 {
            b.adopted(9, 42, t + i);
        }
        assert!(b.adopters(9, t + 60) < 1.5);
        // The window passes.
        assert_eq!(a.adopters(7, t + WINDOW_MS + 60_000), 0.0);
    }
}
