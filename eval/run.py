#!/usr/bin/env python3
"""Vigil's attack lab: realistic attacks and benign changes through a real
Envoy (two workers) loading the built vigil.wasm in monitor mode, scored per
scenario. See eval/README.md for the method.

    eval/run.py [--seeds "1 2 3"] [--only NAME] [--ml] [--json PATH]

Exit status 0 whatever the scores (this is a measurement); 2 when the lab
itself failed (Envoy would not start, traffic did not get through, ...).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from pathlib import Path

EVAL = Path(__file__).resolve().parent
sys.path.insert(0, str(EVAL))

from lab import ml as ML  # noqa: E402
from lab import score  # noqa: E402
from lab.personas import Ctx  # noqa: E402
from lab.population import background  # noqa: E402
from lab.scenario import WARMUP, timeline  # noqa: E402
from lab.sched import Clock, Scheduler  # noqa: E402
from lab.stack import ROOT, LabStack, load_config  # noqa: E402
from lab.verdict import signal_map  # noqa: E402
from lab.world import World  # noqa: E402
from scenarios import ALL, LONG_AT, SLOTS  # noqa: E402

OUT = ROOT / "target" / "eval"


class LabFailure(Exception):
    """The lab could not measure (as opposed to Vigil scoring badly)."""


def log(msg: str) -> None:
    print(f"[eval {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def plan(only: str | None):
    scenarios = [cls() for cls in ALL]
    if only:
        scenarios = [s for s in scenarios if s.name == only]
        if not scenarios:
            raise SystemExit(f"--only: no scenario {only!r}; known: {', '.join(c.name for c in ALL)}")
        s = scenarios[0]
        # A long scenario alone still needs time after its onset: idle slots.
        slots, long_at = ([], {s.name: 0}) if s.long else ([s.name], {})
        if s.long:
            slots = ["_idle"] * 6
        return scenarios, slots, long_at
    return scenarios, SLOTS, LONG_AT


def run_seed(seed: int, args, model_port: int | None) -> dict:
    scenarios, slots, long_at = plan(args.only)
    windows, run_end = timeline(scenarios, [s for s in slots], long_at)
    windows = {k: v for k, v in windows.items() if not k.startswith("_")}
    rng = random.Random(seed)
    world = World(rng)
    clock = Clock()
    tag = f"seed{seed}" + ("-ml" if model_port else "") + (f"-{args.only}" if args.only else "")
    workdir = OUT / tag
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("*.log"):
        stale.unlink()
    config = load_config(bool(model_port))
    (workdir / "vigil.json").write_text(json.dumps(config, indent=1))

    stack = LabStack(workdir, config, model_port=model_port)
    try:
        stack.start()
    except Exception as err:
        stack.stop()
        raise LabFailure(f"the stack did not start: {err}") from err
    try:
        sched = Scheduler(stack.port, clock, run_end)
        ctx = Ctx(clock, world, run_end, sched.results)
        starts = [(a, 0.0) for a in background(ctx, world, random.Random(rng.getrandbits(64)), run_end)]
        for s in scenarios:
            w = windows[s.name]
            r = random.Random(rng.getrandbits(64))
            starts += [(a, 0.0) for a in s.warm(ctx, world, r, w)]
            starts += [(a, w.start) for a in s.actors(ctx, world, r, w)]
        stack.upstream_call("POST", "/_lab/world", world.upstream_doc())
        log(f"seed {seed}: {len(starts)} actors, {len(world.accounts)} accounts; "
            f"warm-up {WARMUP:.0f} s, run {run_end:.0f} s; Envoy on 127.0.0.1:{stack.port}, work dir {workdir}")
        clock.t0 = time.monotonic()
        for actor, at in starts:
            sched.add(actor, at)
        stop_progress = threading.Event()
        threading.Thread(target=progress, args=(sched, clock, run_end, stop_progress), daemon=True).start()
        try:
            results = sched.run()
        finally:
            stop_progress.set()
        if sched.errors:
            raise LabFailure("scenario code failed: " + "; ".join(sched.errors))
        upstream = stack.upstream_records()
        # Vigil's own counters: decisions, and the model calls in --ml runs
        # (each VM hands its counters to Envoy once a second: let them settle).
        try:
            stack.settle(timeout=10)
        except AssertionError:
            pass
        vigil_stats = {k.removeprefix("wasmcustom."): v for k, v in stack.stats().items()
                       if k.startswith(("wasmcustom.vigil_ml_", "wasmcustom.vigil_decisions_total"))
                       and v.strip().isdigit() and v.strip() != "0"}
    finally:
        stack.stop()  # Envoy writes out its access log as it stops
    details = {}
    for line in stack.access_log_lines():
        try:
            rec = json.loads(line.get("vigil") or "null")
        except ValueError:
            rec = None
        if isinstance(rec, dict):
            details[line.get("request_id")] = rec.get("threat_details", [])
    records, checks = join(results, upstream, details)
    checks["vigil_stats"] = vigil_stats
    checks["vigil_decisions_counted"] = sum(int(v) for k, v in vigil_stats.items()
                                            if k.startswith("vigil_decisions_total"))
    with open(workdir / "requests.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    rows = [score.scenario_row(s, windows[s.name], records) for s in scenarios]
    tot = score.totals(rows, records, WARMUP)
    return {"seed": seed, "ml": bool(model_port), "run_s": run_end, "rows": rows, "totals": tot,
            "checks": checks, "requests_file": str(workdir / "requests.jsonl")}


def join(results, upstream, details):
    """One record per request the lab sent: the verdict as the upstream
    received it (the lab's own read of the echo when it never got there),
    and why (the access log's threat_details)."""
    by_rid = {u["rid"]: u for u in upstream if u.get("rid")}
    records, mismatched = [], 0
    for res in sorted(results, key=lambda r: r.t):
        q = res.req
        up = by_rid.get(q.rid)
        decision = up["decision"] if up else res.decision
        if up and res.decision is not None and up["decision"] != res.decision:
            mismatched += 1
        signals = (up or {}).get("signals") or res.signals or ""
        records.append({
            "rid": q.rid, "t": round(res.t, 3), "actor": q.actor, "identity": q.identity, "scenario": q.scenario,
            "role": q.role, "method": q.method, "path": q.path, "status": res.status,
            "reached_upstream": up is not None, "decision": decision,
            "risk": (up or {}).get("risk", res.risk), "signals": signals,
            "vigil_identity": signal_map(signals).get("identity"),
            "threat_details": details.get((up or {}).get("request_id"), []),
            "latency_ms": round(res.latency_ms, 1),
        })
    sent = len(records)
    reached = sum(r["reached_upstream"] for r in records)
    unscored = sum(r["decision"] is None for r in records)
    failed = sum(r["status"] <= 0 for r in records)
    # Did Vigil tell the simulated client addresses apart (x-forwarded-for, one trusted hop)?
    ip_labels = {r["identity"] for r in records if r["identity"].startswith("ip:") and r["vigil_identity"]}
    ip_hashes = {r["vigil_identity"] for r in records if r["identity"].startswith("ip:") and r["vigil_identity"]}
    shapes = sorted({u.get("shape") for u in upstream if u.get("shape")})
    checks = {"sent": sent, "reached_upstream": reached, "unscored": unscored, "transport_errors": failed,
              "echo_vs_upstream_mismatches": mismatched, "header_shapes": shapes,
              "client_addresses": len(ip_labels), "client_address_identities": len(ip_hashes)}
    problems = []
    if sent == 0 or reached < 0.99 * sent:
        problems.append(f"only {reached} of {sent} requests reached the upstream (monitor mode refuses nothing)")
    if failed > 0.01 * sent:
        problems.append(f"{failed} requests failed in transport")
    if ip_labels and len(ip_hashes) < 0.95 * len(ip_labels):
        problems.append(f"{len(ip_labels)} simulated client addresses gave only {len(ip_hashes)} client_ip "
                        f"identities: x-forwarded-for is not read as configured")
    checks["problems"] = problems
    return records, checks


def progress(sched, clock, run_end, stop):
    last = 0
    while not stop.wait(30):
        n = len(sched.results)
        flagged = sum(1 for r in list(sched.results) if r.decision not in (None, "allow"))
        log(f"t={clock.now():5.0f}/{run_end:.0f} s  requests {n} (+{(n - last) / 30:.1f}/s)  flagged {flagged}")
        last = n


def combined(runs) -> list[dict]:
    """Per scenario across seeds."""
    out = []
    for name in [r["scenario"] for r in runs[0]["rows"]]:
        rows = [next(r for r in run["rows"] if r["scenario"] == name) for run in runs]
        c = {"scenario": name, "kind": rows[0]["kind"], "seeds": len(rows),
             "passed": sum(r["pass"] for r in rows),
             "benign_ids_flagged": sum(r["benign_ids_flagged"] for r in rows),
             "benign_ids": sum(r["benign_ids"] for r in rows),
             "benign_reqs_flagged": sum(r["benign_reqs_flagged"] for r in rows),
             "benign_reqs": sum(r["benign_reqs"] for r in rows)}
        if c["kind"] == "attack":
            c["detected"] = sum(r["detected"] for r in rows)
            c["delays_s"] = [r["delay_s"] for r in rows]
            c["later_flagged"] = sum(r["later_flagged"] for r in rows)
            c["later_reqs"] = sum(r["later_reqs"] for r in rows)
        out.append(c)
    return out


def combined_table(comb) -> str:
    lines = ["| scenario | kind | flagged ≤10 s (seeds) | delays (s) | later attack reqs flagged | "
             "benign ids flagged | benign reqs flagged | pass (seeds) |", "|" + "---|" * 8]
    for c in comb:
        if c["kind"] == "attack":
            det = f"{c['detected']}/{c['seeds']}"
            delays = ", ".join("never" if d is None else f"{d:.1f}" for d in c["delays_s"])
            later = score._pct(c["later_flagged"], c["later_reqs"]) if c["later_reqs"] else "—"
        else:
            det = delays = later = "—"
        lines.append(f"| {c['scenario']} | {c['kind']} | {det} | {delays} | {later} | "
                     f"{score._pct(c['benign_ids_flagged'], c['benign_ids'])} | "
                     f"{score._pct2(c['benign_reqs_flagged'], c['benign_reqs'])} | {c['passed']}/{c['seeds']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", default=["1"], help='e.g. --seeds 1 2 3 or --seeds "1 2 3"')
    parser.add_argument("--only", metavar="NAME", help="run one scenario (with the background)")
    parser.add_argument("--ml", action="store_true", help="with the reference model server (MLServer, cascade)")
    parser.add_argument("--model", metavar="DIR", help="--ml with a model repository already trained (skips training)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args()
    seeds = [int(s) for part in args.seeds for s in part.split()]
    started = time.time()
    runs = []
    server = None
    try:
        model_port = None
        if args.ml or args.model:
            mldir = OUT / "ml"
            benign = [cls() for cls in ALL if cls.kind == "benign"]
            model_dir = Path(args.model) if args.model else ML.train(seeds[0], mldir, log, benign)
            server, model_port = ML.serve(model_dir, mldir)
            log(f"ml: MLServer serving {model_dir} on 127.0.0.1:{model_port}")
        for seed in seeds:
            t = time.time()
            run = run_seed(seed, args, model_port)
            run["wall_s"] = round(time.time() - t, 1)
            runs.append(run)
            print(f"\n## Vigil attack lab, seed {seed}{' with the model (cascade)' if run['ml'] else ''}\n")
            print(score.table(run["rows"], run["totals"]))
            c = run["checks"]
            print(f"\n{c['sent']} requests sent, {c['reached_upstream']} reached the upstream, {c['unscored']} unscored, "
                  f"header {', '.join(c['header_shapes']) or 'none'}; {c['client_addresses']} simulated client "
                  f"addresses -> {c['client_address_identities']} client_ip identities; run {run['run_s']:.0f} s, "
                  f"wall {run['wall_s']:.0f} s. Per-request records: {run['requests_file']}")
            if c["vigil_decisions_counted"] != c["sent"]:
                print(f"Note: Vigil counted {c['vigil_decisions_counted']} decisions for {c['sent']} requests.")
            if run["ml"]:
                st = c["vigil_stats"]
                calls = sum(int(v) for k, v in st.items() if k.startswith("vigil_ml_calls_total"))
                fails = sum(int(v) for k, v in st.items() if k.startswith("vigil_ml_failures_total"))
                print(f"Model: {calls} calls, {fails} failed attempts.")
            for p in c["problems"]:
                print(f"LAB PROBLEM: {p}")
            if c["problems"]:
                raise LabFailure("; ".join(c["problems"]))
    except LabFailure as err:
        log(f"the lab failed: {err}")
        return 2
    finally:
        if server:
            server.stop()
    comb = combined(runs) if len(runs) > 1 else None
    if comb:
        print(f"\n## Across seeds {' '.join(map(str, seeds))}\n")
        print(combined_table(comb))
    total = time.time() - started
    print(f"\nTargets: flagged within {score.TARGETS['detect_s']:.0f} s of onset, >= "
          f"{score.TARGETS['later_share']:.0%} of later attack requests flagged, <= {score.TARGETS['benign_ids']:.0%} "
          f"of benign identities and <= {score.TARGETS['benign_reqs']:.1%} of benign requests flagged. "
          f"Total time {total:.0f} s.")
    if args.json:
        doc = {"targets": score.TARGETS, "seeds": seeds, "ml": bool(args.ml or args.model), "only": args.only,
               "total_s": round(total, 1), "runs": runs, "combined": comb}
        Path(args.json).write_text(json.dumps(doc, indent=1))
        log(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
