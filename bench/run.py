#!/usr/bin/env python3
"""`make bench`: Vigil's cost, measured side by side with Envoy alone.

Starts one Envoy per configuration (no filter, an empty Wasm filter, Vigil in
several configurations), all with the same route, worker count and load
generator, then drives them with wrk in interleaved rounds (A B C A B C ...,
order rotated each round) so drift on a noisy shared machine hits all alike.
Reports medians over rounds and, per round, the ratios Vigil / no filter and
Vigil / empty Wasm. Absolute numbers on these machines are noise; ratios hold.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from harness import HARNESS_CONFIG, Process, _wasm_filter, envoy_binary, free_port  # noqa: E402

import yaml  # noqa: E402

VIGIL_WASM = ROOT / "target/wasm32-wasip1/release/vigil.wasm"
EMPTY_WASM = ROOT / "target/wasm32-wasip1/release/vigil_empty_filter.wasm"
FLOOR_WASM = ROOT / "target/wasm32-wasip1/release/vigil_floor_filter.wasm"
LUA = ROOT / "bench" / "identities.lua"
OUT = ROOT / "target" / "bench"

# Vigil configurations measured. Each is the filter JSON (secret fixed so runs compare).
SECRET = {"identity": {"hash_secret": "bench"}}
PT = {
    **SECRET,
    "mode": "enforce",
    "rate_limit": {"requests_per_window": 100_000_000, "window_seconds": 60},
    "behavioral_profiling": {"enable_user_profiling": True},
    "time_series_analysis": {"enable_traffic_analysis": True},
}
ML = {"behavioral_model_url": "http://vigil_ml/v1/score", "model_timeout_ms": 200, "model_retry_count": 1}
MODEL_ANSWER = '{"score": 0.1, "confidence": 0.9}'
VIGIL_CONFIGS = {
    # What an operator gets from an empty configuration (monitor mode, rate signal on).
    "vigil_default": {**SECRET},
    # Enforce mode with the detectors switched on (profiling; traffic analysis
    # takes effect once that detector exists).
    "vigil_profiling_traffic": PT,
    # The same, tuned as docs/performance.md recommends for many identities: a
    # profile cache holding them all, synced every 10 s instead of every second.
    "vigil_profiling_traffic_tuned": {**PT, "behavioral_profiling": {
        "enable_user_profiling": True, "cache_entries": 16384, "sync_interval_ms": 10000}},
    # ML on top of profiling and traffic analysis, one native model answered at
    # once by an Envoy direct response (so the cost measured is Vigil's, not a
    # model's). Compare with vigil_profiling_traffic, which is "ML off".
    "vigil_ml_inline": {**PT, "enable_ml_models": True, "ml_model_config": {**ML, "mode": "inline"}},
    "vigil_ml_async": {**PT, "enable_ml_models": True, "ml_model_config": {**ML, "mode": "async"}},
    # Cascade asks only about requests in the grey zone. 1% of the bench's
    # requests come from one identity ("bench-grey", identities.lua) that runs
    # at 0.55-1x of the rate ceiling set here (200/s at ~15k req/s), so its
    # local risk is in [0.05, 0.6]: inside the grey zone. The share actually
    # asked is measured and reported (ml_share_asked).
    "vigil_ml_cascade": {**PT, "enable_ml_models": True,
                         "rate_limit": {"requests_per_window": 200, "window_seconds": 1},
                         "ml_model_config": {**ML, "mode": "cascade", "grey_zone": {"low": 0.05, "high": 0.75}}},
    # Cost breakdown: the default without its shared-data rate signal, and without upstream headers.
    "vigil_no_rate": {**SECRET, "rate_limit": {"enabled": False}},
    "vigil_no_headers": {**SECRET, "upstream_headers": False},
}
# The memory measurement runs with every table in use.
MEMORY_CONFIG = VIGIL_CONFIGS["vigil_profiling_traffic"]


def envoy_config(name: str, port: int, admin: int, route: str, upstream_port: int | None,
                 wasm: Path | None, filter_json: dict | None) -> dict:
    doc = yaml.safe_load(HARNESS_CONFIG.read_text())
    doc["admin"]["address"]["socket_address"]["port_value"] = admin
    listener = doc["static_resources"]["listeners"][0]
    # The public listener only: the harness's admin listener (a fixed port, and
    # a second copy of the filter) has no place in a side-by-side comparison.
    doc["static_resources"]["listeners"] = [listener]
    listener["address"]["socket_address"]["port_value"] = port
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm.pop("access_log", None)  # logging costs the same for all; keep it out of the comparison
    vhost = hcm["route_config"]["virtual_hosts"][0]
    if route == "direct":
        vhost["routes"] = [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]
    else:
        vhost["routes"] = [{"match": {"prefix": "/"}, "route": {"cluster": "demo_upstream"}}]
        ep = doc["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        ep["endpoint"]["address"]["socket_address"]["port_value"] = upstream_port
    clusters = doc["static_resources"]["clusters"]
    if upstream_port is not None:
        # The model server is the upstream Envoy too (it answers /v1/score).
        for c in clusters:
            ep = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
            ep["endpoint"]["address"]["socket_address"]["port_value"] = upstream_port
    if not isinstance(filter_json, dict) or not filter_json.get("enable_ml_models"):
        doc["static_resources"]["clusters"] = [c for c in clusters if c["name"] == "demo_upstream"]
    wasm_filter = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm")
    if wasm is None:
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f is not wasm_filter]
    else:
        cfg = _wasm_filter(doc)
        cfg["vm_config"]["code"]["local"]["filename"] = str(wasm)
        cfg["vm_config"]["vm_id"] = name
        cfg["name"] = name
        if filter_json is None:
            cfg.pop("configuration", None)
            cfg["root_id"] = ""
        elif isinstance(filter_json, str):
            cfg["configuration"]["value"] = filter_json  # the floor filter's list of contracts
            cfg["root_id"] = ""
        else:
            cfg["configuration"]["value"] = json.dumps(filter_json)
    return doc


def floor_contracts(cfg: dict) -> str:
    """The contracts a Vigil configuration is bound by, as the floor filter
    (bench/floor-filter) names them: the host calls no implementation of that
    configuration could avoid on a request."""
    contracts = []
    if cfg.get("rate_limit", {}).get("enabled", True):
        contracts.append("rate")
    if cfg.get("upstream_headers", True):
        contracts.append("headers")
    if cfg.get("time_series_analysis", {}).get("enable_traffic_analysis", False):
        contracts.append("response")
    return ",".join(contracts)


def floor_name(cfg: dict) -> str:
    return "floor_" + (floor_contracts(cfg).replace(",", "_") or "none")


def upstream_config(port: int, admin: int) -> dict:
    """A fast upstream (another Envoy answering directly), so the upstream is
    never the bottleneck; it is the model server of the ML configurations too."""
    doc = envoy_config("upstream", port, admin, "direct", None, None, None)
    vhost = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]
    vhost["routes"].insert(0, {"match": {"prefix": "/v1/score"}, "direct_response": {
        "status": 200, "body": {"inline_string": MODEL_ANSWER}}})
    return doc


class Envoy:
    """One Envoy under test, on its own ports."""

    def __init__(self, name: str, doc: dict, workdir: Path, concurrency: int):
        self.name = name
        self.port = doc["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
        self.admin = doc["admin"]["address"]["socket_address"]["port_value"]
        path = workdir / f"{name}.json"
        path.write_text(json.dumps(doc))
        self.process = Process(name, [envoy_binary(), "-c", str(path), "--concurrency", str(concurrency),
                                      "--disable-hot-restart", "--log-level", "error"], workdir / f"{name}.log")

    def wait_ready(self) -> None:
        import urllib.request
        for _ in range(200):
            if self.process.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: Envoy exited:\n{self.process.tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: not ready")

    def stats(self) -> dict[str, str]:
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/stats", timeout=5) as r:
            text = r.read().decode()
        return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.process.stop()


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_latency(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * UNITS[m.group(2)]


def wrk(port: int, seconds: float, connections: int, threads: int, env: dict | None = None) -> dict:
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--latency", "-s", str(LUA),
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = {int(p): parse_latency(v) for p, v in re.findall(r"^\s+(50|99)(?:\.\d+)?%\s+(\S+)", out, re.M)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_ms": pct[50], "p99_ms": pct[99], "non_2xx": int(errors.group(1)) if errors else 0}


def measure_memory(workdir: Path, concurrency: int, identities: list[int], seconds: float) -> list[dict]:
    """Envoy's RSS and Vigil's shared-data bytes after N distinct identities."""
    results = []
    for n in identities:
        port, admin = free_port(), free_port()
        doc = envoy_config(f"mem{n}", port, admin, "direct", None, VIGIL_WASM, MEMORY_CONFIG)
        envoy = Envoy(f"mem{n}", doc, workdir, concurrency)
        try:
            envoy.wait_ready()
            time.sleep(0.5)
            rss_before = envoy.rss_bytes()
            deadline = time.time() + 120
            while int(envoy.stats().get("wasmcustom.vigil_requests_total", "0")) < n and time.time() < deadline:
                wrk(port, seconds, 32, 1, {"VIGIL_BENCH_IDENTITIES": str(n), "VIGIL_BENCH_UNIQUE": "1"})
            s = envoy.stats()
            profiles = int(s.get("wasmcustom.vigil_store_slots_used.table.profile", "0"))
            profile_bytes = int(s.get("wasmcustom.vigil_store_bytes.table.profile", "0"))
            shared = int(s.get("wasmcustom.vigil_shared_data_bytes", "0"))
            results.append({
                "identities": n,
                "requests": int(s.get("wasmcustom.vigil_requests_total", "0")),
                "rss_before_mb": round(rss_before / 2**20, 1),
                "rss_after_mb": round(envoy.rss_bytes() / 2**20, 1),
                "shared_data_bytes": shared,
                "rate_slots_used": int(s.get("wasmcustom.vigil_store_slots_used.table.rate", "0")),
                "profiles": profiles,
                "profile_bytes": profile_bytes,
                # The profile table's keys and values over the profiles in it (free slots' keys included).
                "bytes_per_profile": round(profile_bytes / max(1, profiles), 1),
                "evictions": int(s.get("wasmcustom.vigil_store_evictions_total.table.rate", "0"))
                + int(s.get("wasmcustom.vigil_store_evictions_total.table.profile", "0")),
            })
        finally:
            envoy.stop()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--concurrency", type=int, default=1, help="Envoy workers, the same for every Envoy")
    ap.add_argument("--routes", default="direct,upstream")
    ap.add_argument("--identities", type=int, default=10000)
    ap.add_argument("--configs", default="", help="Vigil configurations to run, comma-separated (default: all)")
    ap.add_argument("--memory", default="10000,100000", help="identity counts for the memory measurement ('' to skip)")
    ap.add_argument("--compare-wasm", type=Path, default=None,
                    help="another vigil.wasm (an earlier commit's build) run beside this one with every chosen "
                         "configuration, as <config>@compare: a same-run A/B of a change")
    args = ap.parse_args()

    if not shutil.which("wrk"):
        print("wrk is missing: apt-get install wrk (make bench does it)", file=sys.stderr)
        return 1
    for wasm in (VIGIL_WASM, EMPTY_WASM, FLOOR_WASM):
        if not wasm.exists():
            print(f"{wasm} is missing: run make bench (it builds both filters)", file=sys.stderr)
            return 1

    OUT.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
    routes = [r for r in args.routes.split(",") if r]
    os.environ["VIGIL_BENCH_IDENTITIES"] = str(args.identities)
    envoys: dict[tuple[str, str], Envoy] = {}
    upstream = None
    try:
        chosen = args.configs.split(",") if args.configs else list(VIGIL_CONFIGS)
        needs_ml = any(VIGIL_CONFIGS.get(c, {}).get("enable_ml_models") for c in chosen)
        if "upstream" in routes or needs_ml:
            up_port, up_admin = free_port(), free_port()
            upstream = Envoy("upstream", upstream_config(up_port, up_admin), workdir, 1)
            upstream.wait_ready()
        variants = {"no_filter": (None, None), "empty_wasm": (EMPTY_WASM, None)}
        unknown = [c for c in chosen if c not in VIGIL_CONFIGS]
        if unknown:
            raise SystemExit(f"unknown --configs {unknown}; known: {', '.join(VIGIL_CONFIGS)}")
        # The contract floor of each configuration measured (one Envoy per distinct floor).
        variants.update({floor_name(VIGIL_CONFIGS[k]): (FLOOR_WASM, floor_contracts(VIGIL_CONFIGS[k])) for k in chosen})
        variants.update({k: (VIGIL_WASM, VIGIL_CONFIGS[k]) for k in chosen})
        if args.compare_wasm:
            args.compare_wasm = args.compare_wasm.resolve()
            if not args.compare_wasm.exists():
                raise SystemExit(f"--compare-wasm {args.compare_wasm}: no such file")
            variants.update({f"{k}@compare": (args.compare_wasm, VIGIL_CONFIGS[k]) for k in chosen})
        for route in routes:
            for name, (wasm, cfg) in variants.items():
                doc = envoy_config(f"{name}_{route}", free_port(), free_port(), route,
                                   upstream.port if upstream else None, wasm, cfg)
                envoys[(route, name)] = Envoy(f"{name}_{route}", doc, workdir, args.concurrency)
        for e in envoys.values():
            e.wait_ready()

        names = list(variants)
        samples: dict[tuple[str, str], list[dict]] = {k: [] for k in envoys}
        for rnd in range(args.rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for route in routes:
                for name in order:
                    # Warm-up of one second on the first round only: VM start, connection pools.
                    if rnd == 0:
                        wrk(envoys[(route, name)].port, 1, args.connections, args.threads)
                    samples[(route, name)].append(
                        wrk(envoys[(route, name)].port, args.seconds, args.connections, args.threads))
            print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)

        summary = summarise(samples, routes, names, args)
        for v in summary["vigil"]:
            if VIGIL_CONFIGS[config_of(v["config"])].get("enable_ml_models"):
                stats = envoys[(v["route"], v["config"])].stats()
                calls = sum(int(x) for k, x in stats.items() if k.startswith("wasmcustom.vigil_ml_calls_total"))
                requests = int(stats.get("wasmcustom.vigil_requests_total", "0") or 0)
                v["ml_share_asked"] = round(calls / requests, 4) if requests else None
        summary["memory"] = measure_memory(workdir, args.concurrency,
                                           [int(x) for x in args.memory.split(",") if x], 10) if args.memory else []
        print_table(summary)
        (OUT / "summary.json").write_text(json.dumps(summary, indent=2))
        print(f"\nwritten: {OUT / 'summary.json'}")
    finally:
        for e in envoys.values():
            e.stop()
        if upstream:
            upstream.stop()
    return 0


def config_of(variant: str) -> str:
    """The configuration a variant runs (`vigil_default@compare` runs `vigil_default`)."""
    return variant.split("@", 1)[0]


def summarise(samples, routes, names, args) -> dict:
    med = statistics.median
    table = {}
    for route in routes:
        for name in names:
            s = samples[(route, name)]
            table.setdefault(route, {})[name] = {
                "rps": round(med(x["rps"] for x in s)),
                "p50_ms": round(med(x["p50_ms"] for x in s), 3),
                "p99_ms": round(med(x["p99_ms"] for x in s), 3),
                "non_2xx": sum(x["non_2xx"] for x in s),
            }
    vigil = []
    for route in routes:
        base, empty = samples[(route, "no_filter")], samples[(route, "empty_wasm")]
        for name in names:
            if not name.startswith("vigil"):
                continue
            s = samples[(route, name)]
            floor = floor_name(VIGIL_CONFIGS[config_of(name)])
            vigil.append({
                "config": name,
                "route": route,
                # Ratios are taken within a round, then the median over rounds.
                "throughput_vs_no_filter": round(med(a["rps"] / b["rps"] for a, b in zip(s, base)), 3),
                "throughput_vs_empty_wasm": round(med(a["rps"] / b["rps"] for a, b in zip(s, empty)), 3),
                # Against the contract floor: the share of what any implementation could keep.
                "floor": floor,
                "throughput_vs_floor": round(med(a["rps"] / b["rps"] for a, b in zip(s, samples[(route, floor)])), 3),
                "p99_added_ms": round(med(a["p99_ms"] - b["p99_ms"] for a, b in zip(s, base)), 3),
                "p99_added_vs_empty_wasm_ms": round(med(a["p99_ms"] - b["p99_ms"] for a, b in zip(s, empty)), 3),
                "p50_added_vs_empty_wasm_ms": round(med(a["p50_ms"] - b["p50_ms"] for a, b in zip(s, empty)), 3),
            })
    empty_ratio = {route: round(med(a["rps"] / b["rps"] for a, b in zip(samples[(route, "empty_wasm")], samples[(route, "no_filter")])), 3)
                   for route in routes}
    floors = {route: {name: round(med(a["rps"] / b["rps"] for a, b in zip(samples[(route, name)], samples[(route, "empty_wasm")])), 3)
                      for name in names if name.startswith("floor_")} for route in routes}
    return {
        "method": {"rounds": args.rounds, "seconds": args.seconds, "connections": args.connections,
                   "wrk_threads": args.threads, "envoy_concurrency": args.concurrency,
                   "identities": args.identities, "cpus": os.cpu_count()},
        "results": table,
        "empty_wasm_vs_no_filter": empty_ratio,
        "floor_vs_empty_wasm": floors,
        "vigil": vigil,
    }


def print_table(summary: dict) -> None:
    print("\n%-10s %-32s %10s %9s %9s" % ("route", "envoy", "req/s", "p50 ms", "p99 ms"))
    for route, rows in summary["results"].items():
        for name, r in rows.items():
            print("%-10s %-32s %10d %9.3f %9.3f" % (route, name, r["rps"], r["p50_ms"], r["p99_ms"]))
    print("\nempty wasm / no filter: " + ", ".join(f"{k} {v:.3f}" for k, v in summary["empty_wasm_vs_no_filter"].items()))
    print("contract floor / empty wasm (bench/floor-filter: only the host calls the contracts require):")
    for route, floors in summary["floor_vs_empty_wasm"].items():
        print("  %-10s %s" % (route, ", ".join(f"{k} {v:.3f}" for k, v in floors.items())))
    print("\n%-10s %-32s %10s %10s %10s %10s %10s" % ("route", "vigil config", "vs no filt", "vs empty", "vs floor",
                                                   "p99 +ms", "p99 +ms(e)"))
    for v in summary["vigil"]:
        asked = f"  asked {v['ml_share_asked']:.1%}" if v.get("ml_share_asked") is not None else ""
        print("%-10s %-32s %10.3f %10.3f %10.3f %10.3f %10.3f%s" % (v["route"], v["config"], v["throughput_vs_no_filter"],
              v["throughput_vs_empty_wasm"], v["throughput_vs_floor"], v["p99_added_ms"], v["p99_added_vs_empty_wasm_ms"],
              asked))
    ml_off = {(v["route"]): v for v in summary["vigil"] if v["config"] == "vigil_profiling_traffic"}
    rows = [v for v in summary["vigil"] if v["config"].startswith("vigil_ml_") and v["route"] in ml_off]
    if rows:
        print("\nML against ML off (vigil_profiling_traffic), same run:")
        for v in rows:
            off = ml_off[v["route"]]
            print("%-10s %-32s throughput x%.3f  p99 %+.3f ms" % (v["route"], v["config"],
                  v["throughput_vs_empty_wasm"] / off["throughput_vs_empty_wasm"], v["p99_added_ms"] - off["p99_added_ms"]))
    if summary.get("memory"):
        print("\nmemory (vigil_profiling_traffic, 16384 rate slots and 16384 profiles):")
        print("%-12s %10s %10s %10s %14s %10s %10s %10s" % ("identities", "requests", "RSS MB", "RSS after", "shared bytes",
                                                        "profiles", "B/profile", "evictions"))
        for m in summary["memory"]:
            print("%-12d %10d %10.1f %10.1f %14d %10d %10.1f %10d" % (m["identities"], m["requests"], m["rss_before_mb"],
                  m["rss_after_mb"], m["shared_data_bytes"], m["profiles"], m["bytes_per_profile"], m["evictions"]))


if __name__ == "__main__":
    sys.exit(main())
