#!/usr/bin/env python3
"""Train Vigil's reference anomaly model(s) on features exported from Vigil's own traffic.

Reads JSON-lines access logs (records carrying "ml_features", written when
ml_model_config.export_features is on) or CSV files with a header naming the
features of one version (vigil.v2: 16, vigil.v1: 12; the version is told by the
width), fits an IsolationForest (and, with --lof, a LocalOutlierFactor
with novelty=True), and writes a model repository that `mlserver start DIR` serves:

    DIR/settings.json                    server settings (written only if absent)
    DIR/runtime.py                       the MLServer runtime (copied, so DIR is self-contained)
    DIR/vigil-iforest/model-settings.json, model.joblib
    DIR/vigil-lof/model-settings.json,     model.joblib      (with --lof)

Example:
    .venv-mlserver/bin/python examples/model_server/train.py \\
        --input target/envoy-access.log --out target/vigil-model
"""

import argparse
import csv
import datetime
import json
import math
import os
import shutil
import sys
import tempfile

import joblib
import numpy as np
import sklearn
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor

HERE = os.path.dirname(os.path.abspath(__file__))

# The filter's vectors (filter/src/engine/ml/vector.rs, docs/ml-integration.md).
VERSIONS = {
    "vigil.v1": [
        "method_write", "request_bytes", "route_depth", "route_params",
        "hour_sin", "hour_cos", "rate_ratio", "behavioral_score",
        "profile_maturity", "traffic_anomaly_score", "identity_weak", "has_session",
    ],
    "vigil.v2": [
        "method_write", "request_bytes", "route_depth", "route_params",
        "hour_sin", "hour_cos", "rate_ratio", "profile_maturity",
        "identity_weak", "has_session", "identity_age", "minute_requests",
        "minute_objects", "minute_endpoints", "minute_fail_share", "walk_run",
    ],
}
BY_WIDTH = {len(names): version for version, names in VERSIONS.items()}

# Confidence reported with every score: how much traffic the model learned from,
# on a log scale that reaches 1.0 at CONFIDENT_ROWS training rows (256 rows, one
# IsolationForest subsample, gives about 0.6).
CONFIDENT_ROWS = 10_000

# Floating-point slack when checking that features lie in [0, 1].
RANGE_SLACK = 1e-6


class DataError(Exception):
    pass


def check_row(values, where, version):
    """The row as floats; `version` is a one-item list: the version the first
    row set, which every later row must match."""
    if not isinstance(values, (list, tuple)):
        raise DataError(f"{where}: ml_features is not a list")
    this = BY_WIDTH.get(len(values))
    if this is None:
        widths = ", ".join(f"{v}: {len(n)}" for v, n in VERSIONS.items())
        raise DataError(f"{where}: {len(values)} features is no version Vigil sends ({widths})")
    if version[0] is None:
        version[0] = this
    elif version[0] != this:
        raise DataError(f"{where}: a {this} row among {version[0]} rows: train one version at a time")
    try:
        row = [float(v) for v in values]
    except (TypeError, ValueError):
        raise DataError(f"{where}: a feature is not a number: {values!r}") from None
    for name, v in zip(VERSIONS[this], row):
        if not math.isfinite(v):
            raise DataError(f"{where}: {name} is not finite ({v})")
        if v < -RANGE_SLACK or v > 1 + RANGE_SLACK:
            # Every feature of every version is in [0, 1]; anything else is another encoding.
            raise DataError(f"{where}: {name} = {v} is outside [0, 1]")
    return row


def features_of(record):
    """The ml_features of one log record, or None.

    Vigil's record may be the line itself, or (as in the harness's Envoy access
    log) nested under "vigil", as an object or as a JSON string."""
    if not isinstance(record, dict):
        return None
    if "ml_features" in record:
        return record
    inner = record.get("vigil")
    if isinstance(inner, str) and inner.startswith("{"):
        try:
            inner = json.loads(inner)
        except json.JSONDecodeError:
            return None
    if isinstance(inner, dict) and "ml_features" in inner:
        return inner
    return None


def read_jsonl(path, exclude_decisions, stats, version):
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = features_of(json.loads(line))
            except json.JSONDecodeError:
                record = None
            if record is None:
                stats["skipped_no_features"] += 1
                continue
            if record.get("decision") in exclude_decisions:
                stats["skipped_decision"] += 1
                continue
            rows.append(check_row(record["ml_features"], f"{path}:{n}", version))
    return rows


def read_csv(path, stats, version):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        names = next((n for n in VERSIONS.values() if sorted(header) == sorted(n)), None)
        if names is None:
            wanted = "; ".join(f"{v}: {', '.join(n)}" for v, n in VERSIONS.items())
            raise DataError(
                f"{path}: the header must name the features of one version ({wanted}); "
                f"got {', '.join(header) or 'nothing'}")
        order = [header.index(name) for name in names]
        rows = []
        for n, cells in enumerate(reader, 2):
            if not cells:
                continue
            if len(cells) != len(names):
                raise DataError(f"{path}:{n}: expected {len(names)} columns, got {len(cells)}")
            rows.append(check_row([cells[i] for i in order], f"{path}:{n}", version))
    return rows


def load(paths, exclude_decisions):
    """(rows, stats, version): every row of one feature version."""
    stats = {"skipped_no_features": 0, "skipped_decision": 0}
    rows = []
    version = [None]
    for path in paths:
        if path.lower().endswith(".csv"):
            got = read_csv(path, stats, version)
        else:
            got = read_jsonl(path, exclude_decisions, stats, version)
        print(f"{path}: {len(got)} rows")
        rows.extend(got)
    width = len(VERSIONS[version[0]]) if version[0] else 1
    return np.asarray(rows, dtype=np.float64).reshape(-1, width), stats, version[0]


def describe(name, scores):
    q = np.percentile(scores, [0, 1, 5, 25, 50, 75, 95, 99, 100])
    print(f"{name} decision_function on the training set (negative = anomalous):")
    print("  min {:.4f}  p1 {:.4f}  p5 {:.4f}  p25 {:.4f}  median {:.4f}  "
          "p75 {:.4f}  p95 {:.4f}  p99 {:.4f}  max {:.4f}".format(*q))
    print(f"  negative: {np.mean(scores < 0):.2%} of {len(scores)} rows")
    return {k: float(v) for k, v in zip(["min", "p1", "p5", "p25", "p50", "p75", "p95", "p99", "max"], q)}


NEUTRAL = 0.5


def neutralise(x, columns):
    """A copy of x with the given columns held at NEUTRAL."""
    if not columns:
        return x
    x = np.array(x, dtype=float, copy=True)
    x[:, columns] = NEUTRAL
    return x


def write_model(out, name, kind, model, x, scores_summary, args):
    """One MLServer model folder: the artifact and its model-settings.json."""
    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    artifact = {
        "model": model,
        "kind": kind,
        "feature_version": args.feature_version,
        "features": VERSIONS[args.feature_version],
        "n_train": int(len(x)),
        "confidence": min(1.0, math.log2(1 + len(x)) / math.log2(1 + CONFIDENT_ROWS)),
        "training_scores": scores_summary,
        "trained_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sklearn_version": sklearn.__version__,
        "contamination": args.contamination,
        # Columns held at NEUTRAL: the runtime does the same to every request.
        "ignored": list(args.ignored),
        "seed": args.seed,
    }
    # Write then rename, so a server reloading the model never reads half a file.
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    joblib.dump(artifact, tmp)
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the server may run as another user
    os.replace(tmp, os.path.join(folder, "model.joblib"))

    # The template, with the version and width this model was trained on.
    with open(os.path.join(HERE, "templates", f"{name}.model-settings.json"), encoding="utf-8") as f:
        settings = json.load(f)
    settings["parameters"]["extra"]["feature_version"] = args.feature_version
    settings["inputs"][0]["shape"] = [-1, len(VERSIONS[args.feature_version])]
    with open(os.path.join(folder, "model-settings.json"), "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=2)
        f.write("\n")
    print(f"wrote {folder}/ (confidence {artifact['confidence']:.3f})")


def contamination(value):
    if value == "auto":
        return value
    try:
        c = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError("must be 'auto' or a number in (0, 0.5]") from None
    if not 0 < c <= 0.5:
        raise argparse.ArgumentTypeError("must be 'auto' or a number in (0, 0.5]")
    return c


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, metavar="FILE",
                   help="JSON-lines access logs with ml_features, or CSV files (*.csv) with a header")
    p.add_argument("--out", required=True, metavar="DIR", help="model repository to write (served by `mlserver start DIR`)")
    p.add_argument("--contamination", type=contamination, default=0.01,
                   help="share of training rows that will score negative (anomalous): a fraction in (0, 0.5] "
                        "(default 0.01), or 'auto' for scikit-learn's fixed threshold, which on Vigil's mostly "
                        "binary features puts far more benign traffic below 0")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0), for reproducible models")
    p.add_argument("--min-rows", type=int, default=500, help="refuse to train on fewer rows (default 500)")
    p.add_argument("--exclude-decision", action="append", default=[], metavar="DECISION",
                   help="skip records with this Vigil decision (repeatable), e.g. block, so known abuse "
                        "does not become 'normal'")
    p.add_argument("--ignore-features", default="", metavar="NAMES",
                   help="comma-separated features held at 0.5 in training and scoring, e.g. hour_sin,hour_cos "
                        "when the training traffic spans less than a day (otherwise every later hour is new)")
    p.add_argument("--lof", action="store_true",
                   help="also train LocalOutlierFactor(novelty=True), served as vigil-lof")
    args = p.parse_args(argv)

    try:
        x, stats, version = load(args.input, set(args.exclude_decision))
    except (DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"rows used: {len(x)} (skipped: {stats['skipped_no_features']} without ml_features, "
          f"{stats['skipped_decision']} by decision)")
    if len(x) == 0:
        print("error: no rows with ml_features. Turn on ml_model_config.export_features and "
              "log_record \"all\", send traffic, then train on the access log.", file=sys.stderr)
        return 2
    if len(x) < args.min_rows:
        print(f"error: {len(x)} rows is fewer than --min-rows {args.min_rows}", file=sys.stderr)
        return 2
    args.feature_version = version
    features = VERSIONS[version]
    print(f"feature version: {version} ({len(features)} features)")
    ignored = [n for n in args.ignore_features.split(",") if n]
    unknown = [n for n in ignored if n not in features]
    if unknown:
        print(f"error: --ignore-features: unknown {unknown}; {version} features are {features}", file=sys.stderr)
        return 2
    ignored = [features.index(n) for n in ignored]
    x = neutralise(x, ignored)
    args.ignored = ignored
    unique = len(np.unique(x, axis=0))
    if unique < len(x):
        print(f"distinct rows: {unique}")

    os.makedirs(args.out, exist_ok=True)

    iforest = IsolationForest(n_estimators=200, contamination=args.contamination, random_state=args.seed)
    iforest.fit(x)
    summary = describe("vigil-iforest", iforest.decision_function(x))
    write_model(args.out, "vigil-iforest", "isolation_forest", iforest, x, summary, args)

    if args.lof:
        # LOF has no random state; its contamination plays the same role as above.
        lof = LocalOutlierFactor(n_neighbors=min(35, len(x) - 1), novelty=True, contamination=args.contamination)
        lof.fit(x)
        summary = describe("vigil-lof", lof.decision_function(x))
        print("  (each training row counts itself among its neighbours here, so new traffic scores a bit lower)")
        write_model(args.out, "vigil-lof", "local_outlier_factor", lof, x, summary, args)

    shutil.copy(os.path.join(HERE, "runtime.py"), os.path.join(args.out, "runtime.py"))
    settings = os.path.join(args.out, "settings.json")
    if not os.path.exists(settings):
        shutil.copy(os.path.join(HERE, "settings.json"), settings)
    print(f"serve it: examples/model_server/serve.sh {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
