//! How right each detector and model has been, from operator feedback: per
//! detector, the true positives (a confirmed threat it weighed in on), false
//! positives (a marked false positive it weighed in on) and misses (a
//! confirmed threat it did not weigh in on, including threats reported on
//! requests Vigil let through). Precision = tp / (tp + fp), recall =
//! tp / (tp + missed). One small record in shared data, changed only by
//! feedback.

use super::{Detector, DETECTORS};
use crate::engine::codec::{Reader, Writer};
use crate::engine::ports::{Metric, MetricsSink, SharedStore, StoreError, Table};
use crate::engine::profile::standing::Label;
use crate::engine::record;

const KEY: &str = "vigil/feedback/accuracy";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub true_positives: u32,
    pub false_positives: u32,
    pub missed: u32,
}

impl Counts {
    pub fn precision(&self) -> Option<f64> {
        let n = self.true_positives + self.false_positives;
        (n > 0).then(|| f64::from(self.true_positives) / f64::from(n))
    }

    pub fn recall(&self) -> Option<f64> {
        let n = self.true_positives + self.missed;
        (n > 0).then(|| f64::from(self.true_positives) / f64::from(n))
    }
}

/// Counts per detector, in `DETECTORS` order.
pub type PerDetector = [Counts; DETECTORS.len()];

fn encode(t: &PerDetector) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + t.len() * 12);
    let mut w = Writer(&mut out);
    w.u8(t.len() as u8);
    for c in t {
        w.u32(c.true_positives);
        w.u32(c.false_positives);
        w.u32(c.missed);
    }
    out
}

fn decode(bytes: &[u8]) -> Option<PerDetector> {
    let mut r = Reader(bytes);
    // A record from before a detector was added has fewer entries, in the
    // same order: the new ones start at zero.
    let n = usize::from(r.u8()?);
    if n == 0 || n > DETECTORS.len() {
        return None;
    }
    let mut t = PerDetector::default();
    for c in t.iter_mut().take(n) {
        *c = Counts { true_positives: r.u32()?, false_positives: r.u32()?, missed: r.u32()? };
    }
    r.is_empty().then_some(t)
}

/// Reads the counts.
pub fn read(store: &dyn SharedStore) -> Result<PerDetector, StoreError> {
    Ok(store.get(KEY)?.and_then(|(b, _)| decode(&b)).unwrap_or_default())
}

/// Counts one verdict on a decision whose detectors `mask` weighed in
/// (`None`: a threat on a request Vigil did not flag, missed by all), and
/// moves the precision and recall gauges by what changed.
pub fn record(label: Label, mask: Option<u16>, store: &dyn SharedStore, metrics: &dyn MetricsSink) -> Result<PerDetector, StoreError> {
    let (before, after) = record::update(store, metrics, Table::Feedback, KEY, |bytes| {
        let before = bytes.and_then(decode).unwrap_or_default();
        let mut after = before;
        for (c, d) in after.iter_mut().zip(DETECTORS) {
            let fired = mask.is_some_and(|m| m & d.bit() != 0);
            match (label, fired) {
                (Label::ConfirmedThreat, true) => c.true_positives += 1,
                (Label::ConfirmedThreat, false) => c.missed += 1,
                (Label::FalsePositive, true) => c.false_positives += 1,
                (Label::FalsePositive, false) => {}
            }
        }
        (Some(encode(&after)), (before, after))
    })?;
    for ((b, a), d) in before.iter().zip(&after).zip(DETECTORS) {
        move_gauge(metrics, Metric::Precision(d), b.precision(), a.precision());
        move_gauge(metrics, Metric::Recall(d), b.recall(), a.recall());
    }
    Ok(after)
}

/// Gauges are shared by every worker: each write moves them by its own
/// change, in thousandths, so they add up to the record's value.
fn move_gauge(metrics: &dyn MetricsSink, m: Metric, before: Option<f64>, after: Option<f64>) {
    let permille = |x: Option<f64>| x.map_or(0, |v| (v * 1000.0).round() as u64);
    let (b, a) = (permille(before), permille(after));
    if a > b {
        metrics.add(m, a - b);
    } else if b > a {
        metrics.sub(m, b - a);
    }
}

/// The detector a gauge or count is about, for the admin API.
pub fn named(t: &PerDetector) -> impl Iterator<Item = (Detector, Counts)> + '_ {
    DETECTORS.into_iter().zip(t.iter().copied())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ports::memory::{MemoryMetrics, MemoryStore};

    #[test]
    fn feedback_gives_precision_and_recall_per_detector() {
        let (store, metrics) = (MemoryStore::default(), MemoryMetrics::default());
        let behavior = Detector::Behavior.bit();
        let rate = Detector::Rate.bit();
        record(Label::ConfirmedThreat, Some(behavior), &store, &metrics).unwrap();
        record(Label::ConfirmedThreat, Some(behavior | rate), &store, &metrics).unwrap();
        record(Label::FalsePositive, Some(behavior), &store, &metrics).unwrap();
        let t = record(Label::ConfirmedThreat, None, &store, &metrics).unwrap();
        let b = t[Detector::Behavior as usize];
        assert_eq!((b.true_positives, b.false_positives, b.missed), (2, 1, 1));
        assert!((b.precision().unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert!((b.recall().unwrap() - 2.0 / 3.0).abs() < 1e-9);
        let r = t[Detector::Rate as usize];
        assert_eq!((r.precision(), r.recall()), (Some(1.0), Some(1.0 / 3.0)));
        assert_eq!(t[Detector::Traffic as usize].precision(), None, "never weighed in");
        assert_eq!(metrics.get(Metric::Precision(Detector::Behavior)), 667);
        assert_eq!(metrics.get(Metric::Recall(Detector::Rate)), 333);
        assert_eq!(read(&store).unwrap(), t);
    }
}
