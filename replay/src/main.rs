//! `vigil-replay`: runs Vigil's traffic detector over recorded series, the
//! very code the filter runs, so its quality is measured on data nobody here
//! wrote.
//!
//!   vigil-replay timeseries --input FILE.csv --output OUT.csv
//!   vigil-replay nab --data DIR --labels combined_windows.json [--threshold T]
//!   vigil-replay accesslog --input access.log [--time-series JSON] [--stall-at S --stall-ms MS] [--jitter-from S --jitter-ms MS]

mod accesslog;
mod nab;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vigil::engine::traffic::detector::{threshold, Alarms, Detector, Params};

const USAGE: &str = "usage:
  vigil-replay timeseries --input FILE.csv --output OUT.csv
  vigil-replay nab --data DIR --labels combined_windows.json [--threshold T] [--choose name=v1,v2,...]
  (both take --param name=value to override a detector parameter, for tuning;
   --choose scores choosing that parameter by leave-one-category-out)
  vigil-replay accesslog --input access.log [--time-series JSON] [--stall-at S --stall-ms MS] [--jitter-from S --jitter-ms MS]
  (an Envoy JSON access log through the traffic analysis; JSON is a time_series_analysis object)";

/// The filter's default `anomaly_sensitivity`; `threshold(DEFAULT_SENSITIVITY)`
/// is what a detection means in production, the fixed threshold reported.
const DEFAULT_SENSITIVITY: f64 = 0.8;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("timeseries") => timeseries(&args[1..]),
        Some("nab") => nab_command(&args[1..]),
        Some("accesslog") => accesslog_command(&args[1..]),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-replay: {e}");
            ExitCode::from(2)
        }
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn required(args: &[String], name: &str) -> Result<String, String> {
    flag(args, name).ok_or_else(|| format!("missing {name}\n{USAGE}"))
}

/// `timestamp,value` rows (a header line is skipped), in file order.
fn read_series(path: &Path) -> Result<Vec<(String, f64)>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (n == 0 && line.starts_with("timestamp")) {
            continue;
        }
        let (ts, value) = line.split_once(',').ok_or_else(|| format!("{}:{}: expected timestamp,value", path.display(), n + 1))?;
        let value: f64 = value.trim().parse().map_err(|_| format!("{}:{}: `{value}` is not a number", path.display(), n + 1))?;
        rows.push((ts.trim().to_string(), value));
    }
    Ok(rows)
}

fn detect(values: impl Iterator<Item = f64>, params: Params) -> Vec<f64> {
    let mut d = Detector::new(params);
    let mut alarms = Alarms::new(&params);
    values
        .map(|v| {
            let score = d.update(v);
            alarms.filter(score, d.direction())
        })
        .collect()
}

/// `--param name=value` (repeatable) overrides a detector parameter, for tuning.
fn params(args: &[String]) -> Result<Params, String> {
    let mut p = Params::default();
    for (i, a) in args.iter().enumerate() {
        if a != "--param" {
            continue;
        }
        let kv = args.get(i + 1).ok_or("--param needs name=value")?;
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("--param `{kv}`: expected name=value"))?;
        let v: f64 = v.parse().map_err(|_| format!("--param `{kv}`: not a number"))?;
        set_param(&mut p, k, v)?;
    }
    Ok(p)
}

fn set_param(p: &mut Params, k: &str, v: f64) -> Result<(), String> {
    {
        match k {
            "spread_alpha" => p.spread_alpha = v,
            "tail_p" => p.tail_p = v,
            "tail_rate" => p.tail_rate = v,
            "long_samples" => p.long_samples = v,
            "raw_cap" => p.raw_cap = v,
            "range_tolerance" => p.range_tolerance = v,
            "range_margin" => p.range_margin = v,
            "smooth_alpha" => p.smooth_alpha = v,
            "slow_alpha" => p.slow_alpha = v,
            "range_samples" => p.range_samples = v,
            "short_samples" => p.short_samples = v,
            "season_bin" => p.season_bin = v,
            "warmup" => p.warmup = v as u64,
            "refractory_hold" => p.refractory_hold = v,
            "refractory_decay" => p.refractory_decay = v,
            _ => return Err(format!("unknown parameter `{k}`")),
        }
    }
    Ok(())
}

fn accesslog_command(args: &[String]) -> Result<(), String> {
    let input = PathBuf::from(required(args, "--input")?);
    let text = fs::read_to_string(&input).map_err(|e| format!("{}: {e}", input.display()))?;
    let ts = flag(args, "--time-series").unwrap_or_else(|| "{}".into());
    let cfg = vigil::engine::config::parse(format!(r#"{{"time_series_analysis": {ts}}}"#).as_bytes())
        .map_err(|e| format!("--time-series: {e}"))?
        .time_series_analysis;
    let number = |name: &str| -> Result<Option<u64>, String> {
        flag(args, name).map(|v| v.parse().map_err(|_| format!("{name} `{v}` is not a whole number"))).transpose()
    };
    let pair = |a: &str, b: &str| -> Result<Option<(u64, u64)>, String> { Ok(number(a)?.zip(number(b)?)) };
    let options = accesslog::Options { cfg, stall: pair("--stall-at", "--stall-ms")?, jitter: pair("--jitter-from", "--jitter-ms")? };
    let onsets = accesslog::replay(&text, &options)?;
    for line in &onsets {
        println!("{line}");
    }
    println!("{} anomaly onsets", onsets.len());
    Ok(())
}

fn timeseries(args: &[String]) -> Result<(), String> {
    let input = PathBuf::from(required(args, "--input")?);
    let output = PathBuf::from(required(args, "--output")?);
    let rows = read_series(&input)?;
    let scores = detect(rows.iter().map(|(_, v)| *v), params(args)?);
    let mut out = String::with_capacity(rows.len() * 40);
    out.push_str("timestamp,value,anomaly_score\n");
    for ((ts, v), s) in rows.iter().zip(scores) {
        out.push_str(&format!("{ts},{v},{s:.6}\n"));
    }
    fs::write(&output, out).map_err(|e| format!("{}: {e}", output.display()))
}

/// NAB timestamps compare as text once cut to whole seconds.
fn second(ts: &str) -> &str {
    ts.get(..19).unwrap_or(ts)
}

fn t_out_of(files: &[nab::Scored]) -> f64 {
    nab::best_threshold(files, &nab::PROFILES[0]).0
}

/// The corpus score when every category is scored at the threshold that is
/// best for `p` on the other categories (raw scores add up across categories).
fn leave_one_category_out(files: &[nab::Scored], categories: &[String], p: &nab::Profile) -> f64 {
    let mut raw = 0.0;
    for c in distinct(categories) {
        let (inside, outside) = split(files, categories, c);
        let (t, _) = nab::best_threshold(&outside, p);
        raw += nab::raw_score(&inside, p, t);
    }
    nab::normalise(raw, nab::window_count(files), p)
}

fn distinct(categories: &[String]) -> Vec<&String> {
    let mut names: Vec<&String> = categories.iter().collect();
    names.sort();
    names.dedup();
    names
}

/// The files of category `c`, and the others.
fn split(files: &[nab::Scored], categories: &[String], c: &str) -> (Vec<nab::Scored>, Vec<nab::Scored>) {
    let (inside, outside): (Vec<_>, Vec<_>) = files.iter().zip(categories).partition(|(_, k)| *k == c);
    (inside.into_iter().map(|(f, _)| f.clone()).collect(), outside.into_iter().map(|(f, _)| f.clone()).collect())
}

/// A labelled corpus scored with one set of parameters.
struct Corpus {
    files: Vec<nab::Scored>,
    categories: Vec<String>,
}

fn score_corpus(data: &Path, spans_of: &BTreeMap<String, Vec<(String, String)>>, params: Params) -> Result<Corpus, String> {
    let mut files = Vec::new();
    let mut categories: Vec<String> = Vec::new();
    for (name, spans) in spans_of {
        let path = data.join(name);
        if !path.exists() {
            continue; // a labelled file not in this corpus
        }
        let rows = read_series(&path)?;
        let scores = detect(rows.iter().map(|(_, v)| *v), params);
        let mut idx = Vec::new();
        for (start, end) in spans {
            let left = rows.iter().position(|(ts, _)| second(ts) >= second(start));
            let right = rows.iter().rposition(|(ts, _)| second(ts) <= second(end));
            if let (Some(l), Some(r)) = (left, right) {
                if l <= r {
                    idx.push((l, r));
                }
            }
        }
        files.push(nab::Scored { scores, windows: idx });
        categories.push(name.split('/').next().unwrap_or("").to_string());
    }
    Ok(Corpus { files, categories })
}

/// `--choose name=v1,v2,...`: what choosing that parameter on the data is
/// worth on data it was not chosen on. For each category, the value and the
/// threshold are both chosen on the other categories (best standard score
/// there) and the category is scored with them; the sum is normalised as a
/// corpus score. Also each value's own leave-one-category-out (threshold
/// only), for comparison.
fn choose(spec: &str, data: &Path, spans_of: &BTreeMap<String, Vec<(String, String)>>, base: Params) -> Result<(), String> {
    let (name, values) = spec.split_once('=').ok_or_else(|| format!("--choose `{spec}`: expected name=v1,v2,..."))?;
    let values: Vec<f64> = values.split(',').map(|v| v.parse().map_err(|_| format!("--choose `{spec}`: `{v}` is not a number"))).collect::<Result<_, _>>()?;
    let standard = nab::PROFILES[0];
    let mut corpora = Vec::new();
    println!("{:<24} {:>10} {:>10} {:>24}", format!("{name} ="), "subset", "at fixed", "leave-one-category-out");
    let fixed = threshold(DEFAULT_SENSITIVITY);
    for &v in &values {
        let mut p = base;
        set_param(&mut p, name, v)?;
        let c = score_corpus(data, spans_of, p)?;
        let windows = nab::window_count(&c.files);
        let (_, best) = nab::best_threshold(&c.files, &standard);
        println!("{:<24} {:>10.1} {:>10.1} {:>24.1}", v, nab::normalise(best, windows, &standard),
                 nab::normalise(nab::raw_score(&c.files, &standard, fixed), windows, &standard),
                 leave_one_category_out(&c.files, &c.categories, &standard));
        corpora.push(c);
    }
    let Some(first) = corpora.first() else { return Err("--choose: no values".into()) };
    let mut raw = 0.0;
    let mut picks = Vec::new();
    for cat in distinct(&first.categories) {
        // The value (and threshold) best on the other categories...
        let mut pick: Option<(f64, f64, f64)> = None; // (value, threshold, raw on the others)
        for (&v, c) in values.iter().zip(&corpora) {
            let (_, outside) = split(&c.files, &c.categories, cat);
            let (t, r) = nab::best_threshold(&outside, &standard);
            if pick.map_or(true, |(_, _, best)| r > best) {
                pick = Some((v, t, r));
            }
        }
        let Some((v, t, _)) = pick else { continue };
        // ...scores this category.
        let c = values.iter().position(|&x| x == v).and_then(|i| corpora.get(i)).unwrap_or(first);
        let (inside, _) = split(&c.files, &c.categories, cat);
        raw += nab::raw_score(&inside, &standard, t);
        picks.push(format!("{cat}: {v} ({t:.3})"));
    }
    println!("chosen on the other categories: {}", picks.join(", "));
    println!("{name} chosen by leave-one-category-out (value and threshold on the other categories): {:.1}",
             nab::normalise(raw, nab::window_count(&first.files), &standard));
    Ok(())
}

fn nab_command(args: &[String]) -> Result<(), String> {
    let data = PathBuf::from(required(args, "--data")?);
    let labels = PathBuf::from(required(args, "--labels")?);
    let fixed = match flag(args, "--threshold") {
        Some(t) => t.parse::<f64>().map_err(|_| format!("--threshold `{t}` is not a number"))?,
        None => threshold(DEFAULT_SENSITIVITY),
    };
    let text = fs::read_to_string(&labels).map_err(|e| format!("{}: {e}", labels.display()))?;
    let spans_of: BTreeMap<String, Vec<(String, String)>> =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", labels.display()))?;

    let params = params(args)?;
    if let Some(spec) = flag(args, "--choose") {
        return choose(&spec, &data, &spans_of, params);
    }
    let Corpus { files, categories } = score_corpus(&data, &spans_of, params)?;
    if files.is_empty() {
        return Err(format!("no labelled CSV found under {}", data.display()));
    }
    let windows = nab::window_count(&files);
    println!("fixed threshold {fixed:.4} (threshold({DEFAULT_SENSITIVITY}) unless --threshold)");
    println!("NAB corpus: {} files, {} labelled windows, {} rows", files.len(), windows,
             files.iter().map(|f| f.scores.len()).sum::<usize>());
    // The subset's score beside leave-one-category-out: each category scored at
    // the threshold best for the profile on the other categories. The subset's
    // score is what the threshold was fitted to; the other is closer to what
    // a category nobody tuned on would see.
    println!("{:<16} {:>14} {:>10} {:>22} {:>24}", "profile", "best threshold", "score", format!("score at {fixed:.4}"), "leave-one-category-out");
    for p in &nab::PROFILES {
        let (t, raw) = nab::best_threshold(&files, p);
        let at_fixed = nab::raw_score(&files, p, fixed);
        println!("{:<16} {:>14.4} {:>10.1} {:>22.1} {:>24.1}", p.name, t, nab::normalise(raw, windows, p),
                 nab::normalise(at_fixed, windows, p), leave_one_category_out(&files, &categories, p));
    }
    // Robustness: each category at the corpus's best standard threshold, and
    // leave-one-category-out (the threshold chosen on the other categories).
    let standard = nab::PROFILES[0];
    let (best, _) = nab::best_threshold(&files, &standard);
    let names = distinct(&categories);
    println!("{:<24} {:>8} {:>10} {:>16} {:>10} {:>8}", "category (standard)", "windows", "at best", "left out (thr)", "at fixed", "hit/fp");
    // The corpus score with every category scored at the threshold chosen
    // on the other categories (raw scores add up across categories).
    let mut left_out_raw = 0.0;
    for c in names {
        let (inside, outside): (Vec<_>, Vec<_>) =
            files.iter().zip(&categories).partition(|(_, k)| *k == c);
        let inside: Vec<nab::Scored> = inside.into_iter().map(|(f, _)| f.clone()).collect();
        let outside: Vec<nab::Scored> = outside.into_iter().map(|(f, _)| f.clone()).collect();
        let w = nab::window_count(&inside);
        if w == 0 {
            let raw = |t| nab::raw_score(&inside, &standard, t);
            let (_, fp) = nab::counts(&inside, &standard, best);
            left_out_raw += raw(t_out_of(&outside));
            println!("{:<24} {:>8} {:>10.2} {:>9.2} ({:.3}) {:>10.2} raw fp {}", c, w, raw(best), raw(t_out_of(&outside)), t_out_of(&outside), raw(fixed), fp);
            continue;
        }
        let (t_out, _) = nab::best_threshold(&outside, &standard);
        let score = |t| nab::normalise(nab::raw_score(&inside, &standard, t), w, &standard);
        let (hit, fp) = nab::counts(&inside, &standard, best);
        left_out_raw += nab::raw_score(&inside, &standard, t_out);
        println!("{:<24} {:>8} {:>10.1} {:>9.1} ({:.3}) {:>10.1} {:>4}/{}", c, w, score(best), score(t_out), t_out, score(fixed), hit, fp);
    }
    println!("leave-one-category-out (standard, each category at the others' best threshold): {:.1}",
             nab::normalise(left_out_raw, windows, &standard));
    if std::env::var_os("NAB_FILES").is_some() {
        let names: Vec<&String> = spans_of.keys().filter(|n| data.join(n).exists()).collect();
        for (f, n) in files.iter().zip(names) {
            let one = std::slice::from_ref(f);
            let (hit, fp) = nab::counts(one, &standard, best);
            let detections: Vec<usize> = f.scores.iter().enumerate().filter(|(i, s)| **s >= best && *i >= nab::probation_rows(f.scores.len())).map(|(i, _)| i).collect();
            println!("{n:<58} {:>5} rows win {:?} hit {hit}/{} fp {fp} at {:?}", f.scores.len(), f.windows, f.windows.len(), detections);
        }
    }
    Ok(())
}
