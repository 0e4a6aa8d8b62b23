"""From per-request records to the lab's verdict on Vigil.

"Flagged" means a decision other than `allow`. Per scenario:

- attack scenarios: the delay from the onset to the first attack request
  flagged (detected when it is at most DETECT_S), and the share of the attack
  requests sent after that one which were flagged too;
- every scenario: benign identities with at least one flagged request in the
  scenario's window, out of the benign identities active in it, and benign
  requests flagged. The benign population of a window is the background plus
  the scenario's own benign subjects (a benign-change scenario's users, an
  attack's victim before the onset); other scenarios' subjects are judged in
  their own rows only.

Totals: attack scenarios detected, the pooled share of later attack requests
flagged, and every benign identity and request after the warm-up, once.
Requests of a compromised identity's owner after the onset ("victim") and an
attacker's own preparation ("prep") are neither attack nor benign.
"""

from __future__ import annotations

TARGETS = {"detect_s": 10.0, "later_share": 0.90, "benign_ids": 0.01, "benign_reqs": 0.001}


def flagged(rec: dict) -> bool:
    return rec.get("decision") not in (None, "allow")


def _benign(records, start, end, scenario):
    recs = [r for r in records if r["role"] == "benign" and start <= r["t"] <= end
            and r["scenario"] in ("background", scenario)]
    ids = {r["identity"] for r in recs}
    ids_flagged = {r["identity"] for r in recs if flagged(r)}
    subjects = {r["identity"] for r in recs if r["scenario"] == scenario}
    return {
        "benign_ids": len(ids), "benign_ids_flagged": len(ids_flagged),
        "benign_reqs": len(recs), "benign_reqs_flagged": sum(flagged(r) for r in recs),
        "subjects": len(subjects), "subjects_flagged": len(subjects & ids_flagged),
        "benign_flagged_identities": sorted(ids_flagged),
    }


def scenario_row(sc, w, records) -> dict:
    row = {"scenario": sc.name, "kind": sc.kind, "long": sc.long, "summary": sc.summary,
           "window": [round(w.start, 1), round(w.onset, 1), round(w.stop, 1), round(w.end, 1)]}
    row.update(_benign(records, w.start, w.end, sc.name))
    ok_benign = (row["benign_ids_flagged"] <= TARGETS["benign_ids"] * row["benign_ids"]
                 and row["benign_reqs_flagged"] <= TARGETS["benign_reqs"] * row["benign_reqs"])
    if sc.kind == "attack":
        attack = sorted((r for r in records if r["scenario"] == sc.name and r["role"] == "attack"
                         and r["t"] >= w.onset), key=lambda r: r["t"])
        first = next((r for r in attack if flagged(r)), None)
        row["attack_reqs"] = len(attack)
        row["attack_reqs_flagged"] = sum(flagged(r) for r in attack)
        if first is None:
            row.update(detected=False, delay_s=None, later_reqs=0, later_flagged=0, later_share=None)
        else:
            later = [r for r in attack if r["t"] > first["t"]]
            row["delay_s"] = round(first["t"] - w.onset, 2)
            row["detected"] = row["delay_s"] <= TARGETS["detect_s"]
            row["later_reqs"] = len(later)
            row["later_flagged"] = sum(flagged(r) for r in later)
            row["later_share"] = row["later_flagged"] / len(later) if later else None
        row["pass"] = bool(row["detected"] and row["later_share"] is not None
                           and row["later_share"] >= TARGETS["later_share"] and ok_benign)
    else:
        row["pass"] = ok_benign
    return row


def totals(rows, records, warmup_end) -> dict:
    attacks = [r for r in rows if r["kind"] == "attack"]
    benign = [r for r in records if r["role"] == "benign" and r["t"] >= warmup_end]
    ids = {r["identity"] for r in benign}
    ids_flagged = {r["identity"] for r in benign if flagged(r)}
    later = sum(r["later_reqs"] for r in attacks)
    later_flagged = sum(r["later_flagged"] for r in attacks)
    t = {
        "attack_scenarios": len(attacks), "detected": sum(r["detected"] for r in attacks),
        "later_reqs": later, "later_flagged": later_flagged, "later_share": later_flagged / later if later else None,
        "benign_ids": len(ids), "benign_ids_flagged": len(ids_flagged),
        "benign_reqs": len(benign), "benign_reqs_flagged": sum(flagged(r) for r in benign),
        "scenarios": len(rows), "passed": sum(r["pass"] for r in rows),
    }
    attacks_ok = not attacks or (t["detected"] == t["attack_scenarios"] and t["later_share"] is not None
                                 and t["later_share"] >= TARGETS["later_share"])
    t["pass"] = bool(attacks_ok
                     and t["benign_ids_flagged"] <= TARGETS["benign_ids"] * t["benign_ids"]
                     and t["benign_reqs_flagged"] <= TARGETS["benign_reqs"] * t["benign_reqs"])
    return t


def _pct(n, d):
    return f"{n}/{d} ({100 * n / d:.1f}%)" if d else "0/0"


def _pct2(n, d):
    return f"{n}/{d} ({100 * n / d:.2f}%)" if d else "0/0"


def table(rows, tot) -> str:
    head = ("| scenario | kind | flagged ≤10 s | delay (s) | later attack reqs flagged | benign ids flagged "
            "| benign reqs flagged | subjects flagged | pass |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        if r["kind"] == "attack":
            det = "yes" if r["detected"] else "no"
            delay = f"{r['delay_s']:.1f}" if r["delay_s"] is not None else "never"
            later = _pct(r["later_flagged"], r["later_reqs"]) if r["later_share"] is not None else "—"
            subj = "—"
        else:
            det, delay, later = "—", "—", "—"
            subj = f"{r['subjects_flagged']}/{r['subjects']}"
        lines.append(f"| {r['scenario']} | {r['kind']} | {det} | {delay} | {later} | "
                     f"{_pct(r['benign_ids_flagged'], r['benign_ids'])} | "
                     f"{_pct2(r['benign_reqs_flagged'], r['benign_reqs'])} | {subj} | "
                     f"{'PASS' if r['pass'] else 'fail'} |")
    later = _pct(tot["later_flagged"], tot["later_reqs"]) if tot["later_reqs"] else "—"
    lines.append(f"| **total** | {tot['scenarios']} scenarios, {tot['passed']} pass | "
                 f"{tot['detected']}/{tot['attack_scenarios']} | | {later} | "
                 f"{_pct(tot['benign_ids_flagged'], tot['benign_ids'])} | "
                 f"{_pct2(tot['benign_reqs_flagged'], tot['benign_reqs'])} | | "
                 f"{'PASS' if tot['pass'] else 'fail'} |")
    return "\n".join(lines)
