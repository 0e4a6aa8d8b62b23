//! Behavioural profiling: each identity's normal, learned from its own
//! traffic, and how far one request departs from it.
//!
//! - `stats`: decaying moments, smoothed distributions, surprise.
//! - `model`: what a profile holds, how a request teaches it, its encoding.
//! - `score`: the deviation components and the combined `behavioral_score`.
//! - `cache`: this worker's profiles, synced to shared data once a tick.
//!
//! Profiles live in a bounded slot table in shared data (`max_profiles`
//! slots, created at start-up), so every worker sees the same profile and an
//! attacker inventing identities cannot grow memory: a newcomer only replaces
//! a profile worth less than itself. A cleanup elected by lease reclaims
//! profiles idle past their TTL.

pub mod activity;
pub mod adoption;
pub mod breadth;
pub mod folded;
pub mod cache;
pub mod model;
pub mod population;
pub mod score;
pub mod standing;
pub mod stats;

use super::config::BehavioralProfiling;
use super::features::Features;
use super::hash::HashKey;
use super::lease::Lease;
use super::ports::{Metric, MetricsSink, SharedStore, StoreError, Table};
use super::slots::{Admission, Hints, Record, SlotTable};
use cache::{Cache, Entry, Event, MAX_PENDING};
use model::{Learning, Observation, Profile};
pub use score::{Assessment, Component, Deviation, Scoring};
use std::cell::RefCell;

/// The signal's name in headers and logs.
pub const SIGNAL: &str = "behavior";
/// The default `sync_interval_ms`: a changed profile is written back this long
/// after its last sync, and a clean one not synced for this long is re-read
/// before use, so every worker sees every worker's learning within about this long.
pub const SYNC_MS: u64 = 1_000;
/// Slots the cleanup looks at per tick (in the one VM holding the lease):
/// with a 100 ms tick, 320 a second.
pub const SWEEP_PER_TICK: u32 = 32;
/// The share of the cache one tick may write back at most (1/8): with a
/// 100 ms tick, a full cache of changed profiles is written within a second
/// in slices, never in one stall.
const SYNC_SLICE: usize = 8;
/// A device with less of the identity's history than this is new to it (episode marks, calm).
const RARE_DEVICE_SHARE: f32 = 0.1;
const LEASE_MS: u64 = 5_000;
/// After a drift, old history keeps this share of its weight.
pub const REBASE_KEEP: f32 = 0.1;
/// Two workers that saw the same drift rebase once: a rebase within this
/// many seconds of the last is not replayed onto the shared copy.
const REBASE_GUARD_S: u64 = 60;
/// Eviction ranks profiles by weight halved every day idle.
const KEEP_HALF_LIFE_MS: f64 = 24.0 * 3_600_000.0;

impl Record for Profile {
    const SIZE_HINT: usize = model::MAX_ENCODED;
    fn encode(&self, out: &mut Vec<u8>) {
        Profile::encode(self, out);
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        Profile::decode(bytes)
    }
    /// A profile is worth the evidence in it: its decayed request count,
    /// halved per day idle. A one-request identity is worth about 1.
    fn keep_value(&self, idle_ms: u64) -> f64 {
        f64::from(self.weight) * (-(idle_ms as f64) / KEEP_HALF_LIFE_MS).exp2()
    }
}

/// A request observed and not yet decided: what its baseline learning needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub obs: Observation,
    pub present: model::Present,
}

/// What one tick's sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub written: u32,
    pub not_admitted: u32,
    pub failed: u32,
    /// Expired profiles reclaimed (only in the VM holding the cleanup lease).
    pub reclaimed: u32,
}

pub struct Profiler {
    learning: Learning,
    /// `deviation_threshold`: a deviation at or above it opens an episode.
    gate: f64,
    scoring: Scoring,
    prefix: String,
    lease_key: String,
    slots: u32,
    ttl_ms: u64,
    /// `sync_interval_ms`: how stale a cached profile may get.
    sync_ms: u64,
    cache: RefCell<Cache>,
    /// Where this worker last found identities in the profile table.
    hints: Hints,
    /// What newcomers of each kind normally do (`population`).
    pub population: population::Population,
    /// Routes many established identities take up at once (`adoption`).
    pub adoption: adoption::Shared,
    /// How widely each route is used (`breadth`).
    pub breadth: breadth::Shared,
}

impl Profiler {
    pub fn new(cfg: &BehavioralProfiling) -> Self {
        let prefix = format!("vigil/profile/{}/", cfg.max_profiles);
        Profiler {
            gate: cfg.deviation_threshold,
            learning: Learning {
                window_ms: f64::from(cfg.profile_window_hours) * 3_600_000.0,
                session_gap_ms: u64::from(cfg.session.inactivity_minutes) * 60_000,
            },
            scoring: Scoring {
                min_observations: cfg.min_observations,
                travel_ms: u64::from(cfg.geo.impossible_travel_minutes) * 60_000,
            },
            lease_key: format!("{prefix}cleanup"),
            prefix,
            slots: cfg.max_profiles,
            ttl_ms: u64::from(cfg.ttl_hours()) * 3_600_000,
            sync_ms: u64::from(cfg.sync_interval_ms),
            cache: RefCell::new(Cache::new(cfg.cache_entries as usize)),
            hints: Hints::for_slots(cfg.max_profiles),
            population: population::Population::new("vigil/"),
            adoption: adoption::Shared::new("vigil/"),
            breadth: breadth::Shared::new("vigil/"),
        }
    }

    fn table<'a>(&'a self, store: &'a dyn SharedStore, metrics: &'a dyn MetricsSink) -> SlotTable<'a> {
        SlotTable::new(store, metrics, &self.prefix, self.slots, Table::Profile, self.ttl_ms)
            .with_admission(Admission::WorthAtLeast)
            .with_hints(&self.hints)
    }

    /// Creates the profile slots (start-up, idempotent across workers).
    pub fn start(&self, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<u32, StoreError> {
        let created = self.table(store, metrics).initialize::<Profile>()?;
        if created > 0 {
            let bytes = Lease::create(&self.lease_key, store)?;
            metrics.add(Metric::StoreBytes(Table::Profile), bytes);
            metrics.add(Metric::SharedDataBytes, bytes);
        }
        Ok(created)
    }

    pub fn observation(features: &Features, key: &HashKey) -> Observation {
        Observation {
            time_ms: features.time_ms,
            route: key.hash(&[features.route.as_bytes()]) as u32,
            method: features.method,
            request_bytes: features.request_bytes,
            session: features.session,
            country: features.country,
            asn: features.asn,
            device: features.device,
            object: features.object,
        }
    }

    /// The identity's last sliding minute, from this worker's copy. No host call.
    pub fn activity(&self, owner: u64, now_ms: u64) -> Option<activity::Summary> {
        let mut cache = self.cache.borrow_mut();
        let e = cache.peek_mut(owner)?;
        Some(e.profile.activity.summary(now_ms))
    }

    /// Scores the request against its identity's profile and records its
    /// present; what it teaches the baseline waits for its decision
    /// (`record_decision`, with the returned `Pending`).
    pub fn observe(
        &self,
        features: &Features,
        key: &HashKey,
        store: &dyn SharedStore,
        metrics: &dyn MetricsSink,
    ) -> Result<(Assessment, Pending), StoreError> {
        let owner = features.identity.hash;
        let now = features.time_ms;
        let table = self.table(store, metrics);
        let mut cache = self.cache.borrow_mut();
        match cache.get_mut(owner) {
            Some(entry) => {
                metrics.add(Metric::ProfileCacheHits, 1);
                if !entry.is_dirty() && now.saturating_sub(entry.synced_ms) > self.sync_ms {
                    refresh(&table, entry, now)?;
                }
            }
            None => {
                metrics.add(Metric::ProfileCacheMisses, 1);
                let (profile, version) = match table.read_versioned::<Profile>(owner)? {
                    Some((p, version)) => (p, Some(version)),
                    None => (Profile::default(), None),
                };
                if let Some(victim) = cache.make_room().filter(Entry::is_dirty) {
                    // Its learning goes to shared data at the next tick (or now, if
                    // too many wait); if the table will not take it, it is lost like
                    // any evicted profile.
                    if let Some(mut victim) = cache.defer(victim) {
                        count_failure(self.sync_entry(&table, &mut victim, now), metrics);
                    }
                }
                cache.insert(Entry::new(owner, profile, version, now));
            }
        }
        let entry = cache.get_mut(owner).ok_or(StoreError::Host(0))?;
        let obs = Self::observation(features, key);
        let (mut assessment, present) = score::assess(&mut entry.profile, &obs, &features.route, &self.learning, &self.scoring);
        if let Assessment::Scored(d) = &mut assessment {
            self.released(owner, &obs, d);
            self.popular(&obs, d);
            self.hold(&mut entry.profile, &obs, d);
            // Only routine requests say what everyone uses: an identity
            // deviating (or in an episode) cannot make its route "popular".
            if d.score < self.gate / 2.0 {
                self.breadth.used(obs.route, owner, obs.time_ms);
            }
        }
        entry.push(Event::Request(obs.clone()));
        Ok((assessment, Pending { obs, present }))
    }

    /// A route new to this established identity and, lately, to many others
    /// is a release: its endpoint and mix components count at a fraction.
    fn released(&self, owner: u64, obs: &Observation, d: &mut Deviation) {
        let new_here = d.parts.iter().any(|(c, s)| *c == Component::Endpoint && *s >= score::REASON_AT);
        if new_here {
            self.adoption.adopted(obs.route, owner, obs.time_ms);
        }
        // On an adopted route, the identity's changed mix is the release too.
        let adopters = self.adoption.adopters(obs.route, obs.time_ms);
        if adopters < adoption::RELEASE_AT {
            return;
        }
        let discounted = score::combine(&d.parts, |c, s| {
            if matches!(c, Component::Endpoint | Component::Mix) { s * adoption::ADOPTED_SHARE } else { s }
        });
        d.own = discounted.min(d.own);
        d.score = d.own;
        if new_here {
            d.reasons.push(format!("endpoint: taken up lately by {adopters:.0} identities (a release): counted at {}", adoption::ADOPTED_SHARE));
        }
    }

    /// A route new to this identity that most identities use lately is a
    /// small step: its endpoint component counts at `breadth::keep` of itself
    /// (in the parts too, so the episode's calm sees it). The mix it changes
    /// keeps its weight: a slow walk's shift to routes this identity never
    /// weighted is the takeover's mark even on popular routes.
    fn popular(&self, obs: &Observation, d: &mut Deviation) {
        if !d.parts.iter().any(|(c, s)| *c == Component::Endpoint && *s >= score::REASON_AT) {
            return;
        }
        let popularity = self.breadth.popularity(obs.route, obs.time_ms);
        let keep = breadth::keep(popularity);
        if keep >= 1.0 {
            return;
        }
        breadth::discount(&mut d.parts, keep);
        d.conduct = score::conduct(&d.parts);
        let discounted = score::combine(&d.parts, |_, s| s);
        d.own = discounted.min(d.own);
        d.score = d.own;
        d.reasons.push(format!("endpoint: used lately by {:.0}% as many identities as the widest route: counted at {keep:.2}", popularity * 100.0));
    }

    /// The episode: a request continuing an open one scores at least what it
    /// holds; a deviation opens or renews one (`standing::Episode`).
    fn hold(&self, profile: &mut Profile, obs: &Observation, d: &mut Deviation) {
        let part = |c: Component| d.parts.iter().find(|(k, _)| *k == c).map_or(0.0, |(_, s)| *s);
        let ctx = standing::Context {
            country: obs.country.unwrap_or(0),
            asn: obs.asn.unwrap_or(0),
            device: obs.device.unwrap_or(0),
        };
        // What is new to the identity in this request's context marks the episode.
        let new_country = part(Component::Country) >= score::REASON_AT || part(Component::Travel) >= score::REASON_AT;
        // A device is new while it carries under a tenth of the identity's
        // history: the thief's first requests, allowed and learned before the
        // episode opened, do not make it the victim's.
        let rare_device = obs.device.is_some_and(|dev| {
            let total: f32 = profile.devices.iter().map(|x| x.long).sum();
            let here = profile.devices.iter().find(|x| x.key == dev).map_or(0.0, |x| x.long);
            total >= 5.0 && here < RARE_DEVICE_SHARE * total
        });
        let new_device = rare_device || part(Component::SessionDevice) >= score::REASON_AT;
        let marks = standing::Context {
            country: if new_country { ctx.country } else { 0 },
            asn: if part(Component::Asn) >= score::REASON_AT { ctx.asn } else { 0 },
            device: if new_device { ctx.device } else { 0 },
        };
        // The request without where and when it comes from; from a device new
        // to the identity it is never calm (a thief cannot settle an episode).
        let rest = if new_device { 1.0 } else { score::without_place(&d.parts) };
        let (score, continues, opened) = profile.standing.episode_score(obs.time_ms, d.own, rest, d.conduct, self.gate, &ctx, &marks);
        d.opened = opened;
        if continues && score > d.own && score >= self.gate {
            let e = &profile.standing.episode;
            d.reasons.insert(
                0,
                format!(
                    "episode {score:.2}: continues a deviation that opened {} s ago (this request alone {:.2})",
                    (obs.time_ms / 1000).saturating_sub(u64::from(e.opened_s)),
                    d.own
                ),
            );
        }
        d.score = score;
    }

    /// What a decided request teaches its identity's profile: its baseline
    /// at `weight` (`score::learning_weight`), its risk into the standing
    /// (history, trend, drift). Returns true when this request completes a
    /// drift: the profile has been rebased and the caller reports it. No host
    /// call.
    /// `pending` is what `observe` returned, `at_ms` the decision's time;
    /// the store is for a busy identity's early sync.
    #[allow(clippy::too_many_arguments)]
    pub fn record_decision(
        &self,
        owner: u64,
        pending: &Pending,
        at_ms: u64,
        risk: f64,
        deviated: bool,
        weight: f32,
        drift_ms: u64,
        store: &dyn SharedStore,
        metrics: &dyn MetricsSink,
    ) -> bool {
        let mut cache = self.cache.borrow_mut();
        let Some(entry) = cache.peek_mut(owner) else { return false };
        entry.profile.standing.record(at_ms, risk, deviated);
        entry.profile.learn_baseline(&pending.obs, &pending.present, weight);
        // Folded into the request's own event (normally the last one), so a
        // decision adds no event (and no earlier sync) of its own; if that was
        // synced while the request waited, its baseline and risk go alone.
        let risk = risk as f32;
        let own = entry.pending.iter().rposition(|e| matches!(e, Event::Request(o) if *o == pending.obs));
        match own.and_then(|i| entry.pending.get_mut(i)) {
            Some(slot) => *slot = Event::Scored { obs: pending.obs.clone(), risk, deviated, weight },
            None => {
                entry.push(Event::Baseline { obs: pending.obs.clone(), present: pending.present, weight });
                entry.push(Event::Risk { at_ms, risk, deviated });
            }
        }
        // A busy identity syncs early (once decided: its events are complete),
        // unless the table refused it within the last sync interval.
        if entry.pending.len() >= MAX_PENDING && at_ms >= entry.retry_at_ms {
            // A failure keeps the events for the tick; the request keeps its score.
            count_failure(self.sync_entry(&self.table(store, metrics), entry, at_ms), metrics);
        }
        if !entry.profile.standing.drifted(at_ms, drift_ms) {
            return false;
        }
        entry.profile.rebase(REBASE_KEEP);
        entry.profile.standing.rebased(at_ms);
        entry.push(Event::Rebase { at_ms });
        true
    }

    /// This worker's view of what operators said about the identity: its
    /// threshold offset and the marked pattern this request matches, if any.
    /// No host call (the cached profile, at most a sync old).
    pub fn standing_for(&self, owner: u64, route: u32, mask: u16) -> (f64, Option<standing::Pattern>) {
        let mut cache = self.cache.borrow_mut();
        match cache.peek_mut(owner) {
            Some(e) => (f64::from(e.profile.standing.offset), e.profile.standing.pattern_for(route, mask)),
            None => (0.0, None),
        }
    }

    /// Applies an operator's verdict to the identity's profile in shared
    /// data (and this worker's copy): `change` edits it. Other workers see it
    /// at their next sync, within about `sync_interval_ms`. Returns the profile as
    /// stored, or `None` when the identity has none.
    pub fn apply_feedback(
        &self,
        owner: u64,
        now_ms: u64,
        store: &dyn SharedStore,
        metrics: &dyn MetricsSink,
        change: impl Fn(&mut Profile),
    ) -> Result<Option<Profile>, StoreError> {
        let table = self.table(store, metrics);
        // Read first: feedback must not create a profile for an unknown identity.
        if table.read::<Profile>(owner)?.is_none() {
            return Ok(None);
        }
        let updated = table.update(owner, now_ms, |shared: Option<&Profile>| {
            let mut p = shared.cloned().unwrap_or_default();
            change(&mut p);
            p
        })?;
        if let Some(entry) = self.cache.borrow_mut().peek_mut(owner) {
            // Pending events are replayed onto the shared copy at the next
            // sync; until then this worker's copy takes the change directly.
            change(&mut entry.profile);
        }
        Ok(Some(updated.record))
    }

    /// Learns the status the identity's request got, at the weight its
    /// decision gave the request (the recent failure share always).
    pub fn observe_status(&self, owner: u64, status: u16, weight: f32) {
        if let Some(entry) = self.cache.borrow_mut().get_mut(owner) {
            entry.profile.learn_status(status, weight);
            entry.push(Event::Status { status, weight });
        }
    }

    /// Every tick (100 ms): write back the profiles changed and not synced for
    /// `sync_interval_ms`, at most 1/`SYNC_SLICE` of the cache per tick so the work
    /// comes in slices; and, in the one VM holding the cleanup lease, reclaim
    /// a batch of expired profiles.
    pub fn on_tick(&self, now: u64, instance: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> SyncReport {
        let table = self.table(store, metrics);
        let mut report = SyncReport::default();
        let mut cache = self.cache.borrow_mut();
        let mut budget = (cache.capacity() / SYNC_SLICE).max(16);
        let mut outcomes = Vec::new();
        // Entries pushed out of the cache take at most half the slice, so the
        // cached ones still sync under a flood of newcomers.
        for mut entry in cache.take_deferred(budget / 2) {
            outcomes.push(self.sync_entry(&table, &mut entry, now));
        }
        budget = budget.saturating_sub(outcomes.len());
        let synced_by = now.checked_sub(self.sync_ms);
        for owner in synced_by.map(|by| cache.due(by, budget)).unwrap_or_default() {
            if let Some(entry) = cache.peek_mut(owner) {
                outcomes.push(self.sync_entry(&table, entry, now));
            }
        }
        drop(cache);
        for outcome in outcomes {
            match outcome {
                Ok(()) => report.written += 1,
                Err(StoreError::NotAdmitted) => report.not_admitted += 1,
                Err(_) => {
                    report.failed += 1;
                    metrics.add(Metric::StoreErrors, 1);
                }
            }
        }
        let lease = Lease { key: &self.lease_key, holder: instance.max(1), duration_ms: LEASE_MS };
        if let Ok(Some(cursor)) = lease.acquire(store, now) {
            if let Ok(swept) = table.sweep::<Profile>(cursor, SWEEP_PER_TICK, now) {
                report.reclaimed = swept.freed;
                let _ = lease.save_cursor(store, swept.next);
            }
        }
        report
    }

    /// The shared copy of an identity's profile (for tests and the admin API).
    pub fn read(&self, owner: u64, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<Option<Profile>, StoreError> {
        self.table(store, metrics).read::<Profile>(owner)
    }

    /// Merges an entry's pending events into the shared copy.
    fn sync_entry(&self, table: &SlotTable, entry: &mut Entry, now: u64) -> Result<(), StoreError> {
        // Nobody wrote the slot since this worker read it: its copy (the read
        // plus its own events, already applied) is the merge. One host call.
        if let Some(version) = entry.version.take() {
            match table.write_unchanged(entry.owner, version, now, &entry.profile) {
                Ok(true) => {
                    entry.synced(now);
                    return Ok(());
                }
                Ok(false) => {} // someone did: merge below
                Err(e) => {
                    entry.failed(now, self.sync_ms);
                    return Err(e);
                }
            }
        }
        let (local, pending) = (&entry.profile, &entry.pending);
        let learning = &self.learning;
        let updated = table.update(entry.owner, now, |shared: Option<&Profile>| match shared {
            Some(p) => {
                let mut p = p.clone();
                for event in pending {
                    match event {
                        Event::Request(obs) => {
                            p.learn_present(obs, learning);
                        }
                        Event::Status { status, weight } => p.learn_status(*status, *weight),
                        Event::Scored { obs, risk, deviated, weight } => {
                            let present = p.learn_present(obs, learning);
                            p.learn_baseline(obs, &present, *weight);
                            p.standing.record(obs.time_ms, f64::from(*risk), *deviated);
                        }
                        Event::Baseline { obs, present, weight } => p.learn_baseline(obs, present, *weight),
                        Event::Risk { at_ms, risk, deviated } => p.standing.record(*at_ms, f64::from(*risk), *deviated),
                        // Another worker may have rebased for the same drift already.
                        Event::Rebase { at_ms } if u64::from(p.standing.rebased_s) + REBASE_GUARD_S < at_ms / 1000 => {
                            p.rebase(REBASE_KEEP);
                            p.standing.rebased(*at_ms);
                        }
                        Event::Rebase { .. } => {}
                    }
                }
                p.standing.merge_episode(&local.standing.episode, (now / 1000) as u32);
                // A walk split over workers interleaves when replayed: keep the
                // longest run either side saw, and where this worker's went on.
                if local.activity.run > p.activity.run {
                    let a = &local.activity;
                    (p.activity.run, p.activity.last_route, p.activity.last_number, p.activity.direction) =
                        (a.run, a.last_route, a.last_number, a.direction);
                }
                p
            }
            // Not in shared data (new, evicted or reclaimed): this worker's copy is all there is.
            None => local.clone(),
        });
        match updated {
            Ok(u) => {
                entry.profile = u.record;
                entry.synced(now);
                Ok(())
            }
            Err(e) => {
                entry.failed(now, self.sync_ms);
                Err(e)
            }
        }
    }
}

/// Counts a failed sync that nobody else will (a refusal is counted by the table).
fn count_failure(outcome: Result<(), StoreError>, metrics: &dyn MetricsSink) {
    if matches!(outcome, Err(e) if e != StoreError::NotAdmitted) {
        metrics.add(Metric::StoreErrors, 1);
    }
}

/// Re-reads a clean entry's shared copy (other workers may have taught it).
fn refresh(table: &SlotTable, entry: &mut Entry, now: u64) -> Result<(), StoreError> {
    if let Some((profile, version)) = table.read_versioned::<Profile>(entry.owner)? {
        entry.profile = profile;
        entry.version = Some(version);
    }
    entry.synced_ms = now;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::BehavioralProfiling;
    use crate::engine::features::Method;
    use crate::engine::identity::{Identity, IdentityKind};
    use crate::engine::ports::memory::{MemoryMetrics, MemoryStore};

    const HOUR: u64 = 3_600_000;

    fn cfg(max_profiles: u32, cache_entries: u32) -> BehavioralProfiling {
        BehavioralProfiling { enable_user_profiling: true, max_profiles, cache_entries, ..Default::default() }
    }

    fn features(owner: u64, t: u64, route: &str) -> Features {
        Features::new("r".into(), Identity { kind: IdentityKind::User, hash: owner }, Method::Get, route.into(), t)
    }

    fn key() -> HashKey {
        HashKey::from_secret(b"test")
    }

    /// Observes a request and records it as decided ordinary, as the pipeline does.
    fn decided(p: &Profiler, f: &Features, key: &HashKey, store: &MemoryStore, metrics: &MemoryMetrics) -> Result<Assessment, StoreError> {
        let (a, pending) = p.observe(f, key, store, metrics)?;
        p.record_decision(f.identity.hash, &pending, f.time_ms, 0.0, false, 1.0, u64::MAX, store, metrics);
        Ok(a)
    }

    fn observations(p: &Profiler, owner: u64, store: &MemoryStore) -> u32 {
        p.read(owner, store, &MemoryMetrics::default()).unwrap().map_or(0, |p| p.observations)
    }

    #[test]
    fn a_profile_read_once_syncs_with_one_write_and_a_stale_read_still_merges() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let (a, b) = (Profiler::new(&cfg(64, 64)), Profiler::new(&cfg(64, 64)));
        a.start(&store, &metrics).unwrap();
        // The profile exists in shared data (worker b taught it and synced).
        decided(&b, &features(42, 1_000, "/a"), &key(), &store, &metrics).unwrap();
        b.on_tick(3_000, 2, &store, &metrics);
        // Worker a reads it (a miss), learns three requests, and syncs: one
        // write, and no read of the profile (the one read is the cleanup
        // lease, which worker b holds).
        for t in [4_000, 4_100, 4_200] {
            decided(&a, &features(42, t, "/a"), &key(), &store, &metrics).unwrap();
        }
        let (reads, writes) = (store.reads.get(), store.writes.get());
        a.on_tick(6_000, 1, &store, &metrics);
        assert_eq!((store.reads.get() - reads, store.writes.get() - writes), (1, 1));
        assert_eq!(observations(&a, 42, &store), 4);
        // Both read, b writes first: a's blind write is refused and a merges instead.
        decided(&a, &features(42, 10_000, "/a"), &key(), &store, &metrics).unwrap(); // refreshes (clean, a sync old)
        decided(&b, &features(42, 10_000, "/b"), &key(), &store, &metrics).unwrap();
        b.on_tick(12_000, 2, &store, &metrics);
        a.on_tick(12_000, 1, &store, &metrics);
        assert_eq!(observations(&a, 42, &store), 6, "nothing lost");
    }

    #[test]
    fn two_workers_share_one_profile_and_lose_no_observation() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let (a, b) = (Profiler::new(&cfg(64, 64)), Profiler::new(&cfg(64, 64)));
        a.start(&store, &metrics).unwrap();
        assert_eq!(b.start(&store, &metrics).unwrap(), 0, "the table is created once");
        let mut t = 0;
        for round in 0..20 {
            for _ in 0..7 {
                t += 100;
                decided(&a, &features(42, t, "/a"), &key(), &store, &metrics).unwrap();
            }
            for _ in 0..5 {
                t += 100;
                decided(&b, &features(42, t, "/b"), &key(), &store, &metrics).unwrap();
            }
            if round % 2 == 0 {
                a.on_tick(t, 1, &store, &metrics);
                b.on_tick(t, 2, &store, &metrics);
            } else {
                b.on_tick(t, 2, &store, &metrics);
                a.on_tick(t, 1, &store, &metrics);
            }
        }
        assert_eq!(observations(&a, 42, &store), 20 * 12);
        // A worker that has not seen the identity for a tick reads what both taught.
        let d = match decided(&b, &features(42, t + 5_000, "/a"), &key(), &store, &metrics).unwrap() {
            Assessment::Scored(d) => d,
            cold => unreachable!("{cold:?}"),
        };
        assert_eq!(d.observations, 20 * 12 + 1);
        assert!(metrics.get(Metric::ProfileCacheHits) > 200);
        assert_eq!(metrics.get(Metric::ProfileCacheMisses), 2, "one per worker");
        assert_eq!(metrics.get(Metric::StoreSlotsUsed(Table::Profile)), 1);
        assert_eq!(metrics.get(Metric::SharedDataBytes), store.bytes() as u64, "the byte gauge is exact");
    }

    #[test]
    fn a_longer_sync_interval_writes_back_and_rereads_later() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let mut c = cfg(64, 64);
        c.sync_interval_ms = 10_000;
        let p = Profiler::new(&c);
        p.start(&store, &metrics).unwrap();
        for t in 0..5 {
            decided(&p, &features(7, t, "/a"), &key(), &store, &metrics).unwrap();
        }
        assert_eq!(p.on_tick(5_000, 1, &store, &metrics).written, 0, "not due before the interval");
        assert_eq!(p.on_tick(10_005, 1, &store, &metrics).written, 1);
        assert_eq!(observations(&p, 7, &store), 5);
        // Clean and synced 5 s ago: the default interval would re-read it, this one does not.
        let reads = store.reads.get();
        decided(&p, &features(7, 15_000, "/a"), &key(), &store, &metrics).unwrap();
        assert_eq!(store.reads.get(), reads, "used the cached copy");
        assert_eq!(p.on_tick(20_006, 1, &store, &metrics).written, 1);
        // Clean and synced more than the interval ago: re-read before use.
        let reads = store.reads.get();
        decided(&p, &features(7, 30_100, "/a"), &key(), &store, &metrics).unwrap();
        assert!(store.reads.get() > reads, "re-read after the interval");
        assert_eq!(observations(&p, 7, &store), 6);
    }

    #[test]
    fn sync_conflicts_are_retried_counted_and_lose_nothing() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let p = Profiler::new(&cfg(64, 64));
        p.start(&store, &metrics).unwrap();
        for t in 0..10 {
            decided(&p, &features(7, t, "/a"), &key(), &store, &metrics).unwrap();
        }
        assert_eq!(p.on_tick(500, 1, &store, &metrics).written, 0, "not due before SYNC_MS");
        p.on_tick(SYNC_MS, 1, &store, &metrics);
        for t in 10..20 {
            decided(&p, &features(7, SYNC_MS + t, "/a"), &key(), &store, &metrics).unwrap();
        }
        store.inject_conflicts.set(3);
        let report = p.on_tick(2 * SYNC_MS, 1, &store, &metrics);
        assert_eq!(report.written, 1);
        assert_eq!(metrics.get(Metric::StoreCasConflicts(Table::Profile)), 3);
        assert_eq!(observations(&p, 7, &store), 20);
    }

    #[test]
    fn a_flood_of_new_identities_keeps_the_bound_and_the_established_profiles() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let p = Profiler::new(&cfg(64, 16));
        p.start(&store, &metrics).unwrap();
        let mut t = 0;
        for round in 0..50 {
            for user in 1..=16u64 {
                t += 10;
                decided(&p, &features(user, t, "/home"), &key(), &store, &metrics).unwrap();
            }
            if round % 5 == 0 {
                p.on_tick(t, 1, &store, &metrics);
            }
        }
        p.on_tick(t, 1, &store, &metrics);
        let established: Vec<u32> = (1..=16).map(|u| observations(&p, u, &store)).collect();
        assert!(established.iter().filter(|&&n| n == 50).count() >= 14, "{established:?}");
        let (keys, bytes) = (store.len(), store.bytes());
        for i in 0..40_000u64 {
            t += 1;
            let _ = decided(&p, &features(1_000 + i * 7, t, "/x"), &key(), &store, &metrics);
            if i % 100 == 0 {
                p.on_tick(t, 1, &store, &metrics);
            }
        }
        p.on_tick(t, 1, &store, &metrics);
        assert_eq!(store.len(), keys, "no key is ever added");
        assert!(store.bytes() <= bytes + 64 * (model::MAX_ENCODED + 17));
        assert!(metrics.get(Metric::StoreSlotsUsed(Table::Profile)) <= 64);
        let after: Vec<u32> = (1..=16).map(|u| observations(&p, u, &store)).collect();
        assert_eq!(after, established, "established profiles survive the flood untouched");
        assert!(metrics.get(Metric::StoreNotAdmitted(Table::Profile)) > 0);
        assert!(metrics.get(Metric::StoreEvictions(Table::Profile)) > 10_000, "newcomers recycle newcomers");
        assert_eq!(metrics.get(Metric::SharedDataBytes), store.bytes() as u64);
    }

    #[test]
    fn expired_profiles_are_reclaimed_by_one_worker() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let mut c = cfg(64, 64);
        c.profile_ttl_hours = Some(1);
        let (a, b) = (Profiler::new(&c), Profiler::new(&c));
        a.start(&store, &metrics).unwrap();
        for user in 1..=10u64 {
            decided(&a, &features(user, 0, "/a"), &key(), &store, &metrics).unwrap();
        }
        a.on_tick(SYNC_MS, 1, &store, &metrics);
        assert_eq!(metrics.get(Metric::StoreSlotsUsed(Table::Profile)), 10);
        let later = 2 * HOUR;
        // Both workers tick; the lease lets one of them sweep, a slice per tick.
        let (mut by_a, mut by_b) = (0, 0);
        for tick in 0..(64 / SWEEP_PER_TICK as u64) {
            by_a += a.on_tick(later + tick * 100, 1, &store, &metrics).reclaimed;
            by_b += b.on_tick(later + tick * 100, 2, &store, &metrics).reclaimed;
        }
        assert_eq!((by_a, by_b), (10, 0));
        assert_eq!(metrics.get(Metric::StoreSlotsUsed(Table::Profile)), 0);
        assert_eq!(metrics.get(Metric::StoreExpired(Table::Profile)), 10);
        assert_eq!(observations(&a, 3, &store), 0);
        assert_eq!(metrics.get(Metric::SharedDataBytes), store.bytes() as u64);
    }

    #[test]
    fn statuses_reach_the_shared_profile() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let p = Profiler::new(&cfg(64, 64));
        p.start(&store, &metrics).unwrap();
        for t in 0..5 {
            decided(&p, &features(9, t, "/a"), &key(), &store, &metrics).unwrap();
            p.observe_status(9, 401, 1.0);
        }
        p.on_tick(SYNC_MS, 1, &store, &metrics);
        let shared = p.read(9, &store, &metrics).unwrap().unwrap();
        assert_eq!(shared.status[model::status_class(401)], 5.0);
    }

    #[test]
    fn a_busy_identity_with_statuses_loses_no_request() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let p = Profiler::new(&cfg(64, 64));
        p.start(&store, &metrics).unwrap();
        for t in 0..100 {
            decided(&p, &features(5, t, "/a"), &key(), &store, &metrics).unwrap();
            p.observe_status(5, 200, 1.0);
        }
        p.on_tick(SYNC_MS + 100, 1, &store, &metrics);
        assert_eq!(observations(&p, 5, &store), 100);
    }

    #[test]
    fn a_refused_profile_backs_off_instead_of_retrying_every_request() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let p = Profiler::new(&cfg(16, 64));
        p.start(&store, &metrics).unwrap();
        // Fill every slot with established profiles.
        for round in 0..40u64 {
            for user in 1..=64u64 {
                decided(&p, &features(user, round * 10, "/a"), &key(), &store, &metrics).unwrap();
            }
            p.on_tick(round * 10 + SYNC_MS * (round + 1), 1, &store, &metrics);
        }
        let refused_before = metrics.get(Metric::StoreNotAdmitted(Table::Profile));
        // A newcomer busy enough to want early syncs.
        for t in 0..200 {
            decided(&p, &features(999_999, 50_000 + t, "/x"), &key(), &store, &metrics).unwrap();
        }
        let refusals = metrics.get(Metric::StoreNotAdmitted(Table::Profile)) - refused_before;
        assert!(refusals <= 2, "{refusals} refusals for 200 requests");
    }
}
