//! NAB scoring, as the Numenta Anomaly Benchmark defines it (see
//! ../shared/data/nab/README.md for the summary this follows):
//!
//! - rows in the probationary period (the first 15% of a file, at most 750
//!   rows) are not scored;
//! - inside a labelled window only the best (earliest) detection counts, worth
//!   the true-positive weight scaled by a sigmoid of its position;
//! - a window without a detection costs the false-negative weight;
//! - a detection outside every window costs the false-positive weight, scaled
//!   by a sigmoid of its distance past the previous window (-1 before any);
//! - a corpus score is normalised: 100 (S - S_null) / (S_perfect - S_null).

/// A NAB application profile: the weights of true positives, false positives
/// and false negatives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    pub name: &'static str,
    pub tp: f64,
    pub fp: f64,
    pub fn_: f64,
}

pub const PROFILES: [Profile; 3] = [
    Profile { name: "standard", tp: 1.0, fp: 0.11, fn_: 1.0 },
    Profile { name: "reward_low_FP", tp: 1.0, fp: 0.22, fn_: 1.0 },
    Profile { name: "reward_low_FN", tp: 1.0, fp: 0.11, fn_: 2.0 },
];

/// One scored file: the detector's score per row and the rows of each labelled
/// window (inclusive).
#[derive(Debug, Clone)]
pub struct Scored {
    pub scores: Vec<f64>,
    pub windows: Vec<(usize, usize)>,
}

pub fn probation_rows(rows: usize) -> usize {
    ((0.15 * rows as f64).floor() as usize).min(750)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// NAB's scaled sigmoid: +1 (early in a window) down to -1 (well past it).
fn scaled_sigmoid(position: f64) -> f64 {
    if position > 3.0 {
        -1.0
    } else {
        2.0 * sigmoid(-5.0 * position) - 1.0
    }
}

/// What a detection at one row would earn.
#[derive(Debug, Clone, Copy)]
struct Point {
    score: f64,
    /// Index of the window (within the corpus) the row is in, if any.
    window: Option<usize>,
    /// Weighted NAB score of a detection here, for the profile.
    value: f64,
}

fn points(files: &[Scored], p: &Profile) -> (Vec<Point>, usize) {
    let max_tp = scaled_sigmoid(-1.0);
    let mut out = Vec::new();
    let mut window_base = 0;
    for f in files {
        let probation = probation_rows(f.scores.len());
        let mut windows = f.windows.clone();
        windows.sort_unstable();
        let mut next = 0; // the next window not yet passed
        let mut previous: Option<(usize, usize)> = None; // (right index, width) of the last window passed
        for (i, &score) in f.scores.iter().enumerate() {
            while let Some(&(_, right)) = windows.get(next) {
                if i > right {
                    let (left, right) = windows.get(next).copied().unwrap_or((0, 0));
                    previous = Some((right, right - left + 1));
                    next += 1;
                } else {
                    break;
                }
            }
            let (window, value) = match windows.get(next) {
                Some(&(left, right)) if i >= left => {
                    let width = (right - left + 1) as f64;
                    let position = -((right - i + 1) as f64) / width;
                    (Some(window_base + next), scaled_sigmoid(position) * p.tp / max_tp)
                }
                _ => {
                    let unweighted = match previous {
                        None => -1.0,
                        Some((right, width)) => {
                            scaled_sigmoid((i - right) as f64 / (width.saturating_sub(1).max(1)) as f64)
                        }
                    };
                    (None, unweighted * p.fp)
                }
            };
            if i >= probation && score.is_finite() {
                out.push(Point { score, window, value });
            }
        }
        window_base += windows.len();
    }
    (out, window_base)
}

/// The raw NAB score of the corpus at `threshold`.
pub fn raw_score(files: &[Scored], p: &Profile, threshold: f64) -> f64 {
    let (points, windows) = points(files, p);
    let mut best: Vec<Option<f64>> = vec![None; windows];
    let mut fp = 0.0;
    for pt in points.iter().filter(|pt| pt.score >= threshold) {
        match pt.window.and_then(|w| best.get_mut(w)) {
            Some(b) => *b = Some(b.map_or(pt.value, |v: f64| v.max(pt.value))),
            None => fp += pt.value,
        }
    }
    fp + best.iter().map(|b| b.unwrap_or(-p.fn_)).sum::<f64>()
}

/// Windows detected and detections outside windows at `threshold`.
pub fn counts(files: &[Scored], p: &Profile, threshold: f64) -> (usize, usize) {
    let (points, windows) = points(files, p);
    let mut hit = vec![false; windows];
    let mut fp = 0;
    for pt in points.iter().filter(|pt| pt.score >= threshold) {
        match pt.window.and_then(|w| hit.get_mut(w)) {
            Some(h) => *h = true,
            None => fp += 1,
        }
    }
    (hit.iter().filter(|&&h| h).count(), fp)
}

/// Normalises a raw corpus score to NAB's 0 (never fires) .. 100 (perfect).
pub fn normalise(raw: f64, windows: usize, p: &Profile) -> f64 {
    let null = -p.fn_ * windows as f64;
    let perfect = p.tp * windows as f64;
    100.0 * (raw - null) / (perfect - null)
}

pub fn window_count(files: &[Scored]) -> usize {
    files.iter().map(|f| f.windows.len()).sum()
}

/// The single threshold that maximises the corpus score, and that score
/// (raw). Sweeps every distinct score from the top down, updating the total
/// incrementally.
pub fn best_threshold(files: &[Scored], p: &Profile) -> (f64, f64) {
    let (mut points, windows) = points(files, p);
    points.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut best: Vec<Option<f64>> = vec![None; windows];
    let mut total = -p.fn_ * windows as f64;
    let mut top = (f64::INFINITY, total);
    let mut i = 0;
    while i < points.len() {
        let threshold = points.get(i).map_or(0.0, |pt| pt.score);
        while let Some(pt) = points.get(i).filter(|pt| pt.score >= threshold) {
            match pt.window.and_then(|w| best.get_mut(w)) {
                Some(b) => {
                    let before = b.unwrap_or(-p.fn_);
                    let after = b.map_or(pt.value, |v| v.max(pt.value));
                    total += after - before;
                    *b = Some(after);
                }
                None => total += pt.value,
            }
            i += 1;
        }
        if total > top.1 {
            top = (threshold, total);
        }
    }
    top
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(scores: Vec<f64>, windows: Vec<(usize, usize)>) -> Scored {
        Scored { scores, windows }
    }

    #[test]
    fn perfect_null_and_late_detections() {
        let p = PROFILES[0];
        // 1000 rows, probation 150, one window 500..=599.
        let mut s = vec![0.0; 1000];
        let f = file(s.clone(), vec![(500, 599)]);
        assert_eq!(raw_score(std::slice::from_ref(&f), &p, 0.5), -1.0);
        assert_eq!(normalise(-1.0, 1, &p), 0.0);
        s[500] = 1.0;
        let f = file(s.clone(), vec![(500, 599)]);
        let raw = raw_score(std::slice::from_ref(&f), &p, 0.5);
        assert!((raw - 1.0).abs() < 1e-9, "{raw}");
        assert!((normalise(raw, 1, &p) - 100.0).abs() < 1e-9);
        // A detection at the end of the window is worth less; still positive-ish.
        let mut late = vec![0.0; 1000];
        late[599] = 1.0;
        let r = raw_score(&[file(late, vec![(500, 599)])], &p, 0.5);
        assert!(r < 0.1 && r > -0.1, "{r}");
    }

    #[test]
    fn false_positives_cost_less_just_after_a_window_and_nothing_in_probation() {
        let p = PROFILES[0];
        let mut s = vec![0.0; 1000];
        s[100] = 1.0; // in probation: ignored
        s[300] = 1.0; // before any window: -0.11
        let r = raw_score(&[file(s.clone(), vec![(500, 599)])], &p, 0.5);
        assert!((r - (-1.0 - 0.11)).abs() < 1e-9, "{r}");
        let mut s = vec![0.0; 1000];
        s[500] = 1.0;
        s[601] = 1.0; // just after the window: small cost
        s[990] = 1.0; // long after: full cost
        let r = raw_score(&[file(s, vec![(500, 599)])], &p, 0.5);
        assert!(r < 1.0 - 0.11 && r > 1.0 - 0.11 - 0.11, "{r}");
    }

    #[test]
    fn the_sweep_finds_the_best_threshold() {
        let p = PROFILES[0];
        let mut s: Vec<f64> = (0..1000).map(|i| (i % 7) as f64 / 20.0).collect();
        s[510] = 0.9;
        let files = [file(s, vec![(500, 599)])];
        let (t, raw) = best_threshold(&files, &p);
        assert!((t - 0.9).abs() < 1e-12);
        assert!((raw - raw_score(&files, &p, t)).abs() < 1e-9);
        for probe in [0.1, 0.3, 0.5, 0.95] {
            assert!(raw_score(&files, &p, probe) <= raw + 1e-9);
        }
    }
}
