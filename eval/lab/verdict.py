"""Reading Vigil's verdict from the headers the upstream received.

Two shapes exist, and the lab accepts whichever the build sends:
  x-vigil: decision=allow, risk=0.12, signals="rate=0.1;identity=user:..."
           (an RFC 9651 structured-field dictionary)
  x-vigil-decision / x-vigil-risk-score / x-vigil-signals (the older split headers)

`x-vigil` wins when both are present. That is only safe because no lab client
ever sends either: a build that writes the split headers passes a client's
own `x-vigil` through to the upstream untouched (checked on this build), so an
upstream that trusts `x-vigil` must make sure Vigil is the one writing it.
"""

from __future__ import annotations


def parse_sf_dictionary(value: str) -> dict[str, object]:
    """A small RFC 9651 dictionary parser: bare items (tokens, integers,
    decimals, strings, booleans) with their parameters dropped. Enough for
    Vigil's header; anything it cannot read is skipped, not guessed."""
    out: dict[str, object] = {}
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t":
            i += 1
        start = i
        while i < n and (value[i].isalnum() or value[i] in "_-.*"):
            i += 1
        key = value[start:i].lower()
        item: object = True
        if i < n and value[i] == "=":
            i += 1
            if i < n and value[i] == '"':
                i += 1
                chars = []
                while i < n and value[i] != '"':
                    if value[i] == "\\" and i + 1 < n:
                        i += 1
                    chars.append(value[i])
                    i += 1
                i += 1  # closing quote
                item = "".join(chars)
            else:
                start = i
                while i < n and value[i] not in ",;":
                    i += 1
                raw = value[start:i].strip()
                if raw in ("?1", "?0"):
                    item = raw == "?1"
                else:
                    try:
                        item = float(raw) if "." in raw else int(raw)
                    except ValueError:
                        item = raw  # a token, e.g. allow
        while i < n and value[i] != ",":  # parameters: not needed
            if value[i] == '"':
                i = value.find('"', i + 1) + 1 or n
            else:
                i += 1
        i += 1
        if key:
            out[key] = item
    return out


def verdict(headers: dict[str, str]) -> dict | None:
    """{decision, risk, signals, shape} from lowercased request headers, or
    None when the request carried no verdict at all."""
    if "x-vigil" in headers:
        d = parse_sf_dictionary(headers["x-vigil"])
        if "decision" in d:
            risk = d.get("risk")
            return {"decision": str(d["decision"]), "risk": float(risk) if isinstance(risk, (int, float)) else None,
                    "signals": str(d.get("signals", "")), "shape": "x-vigil"}
    if "x-vigil-decision" in headers:
        try:
            risk = float(headers.get("x-vigil-risk-score", ""))
        except ValueError:
            risk = None
        return {"decision": headers["x-vigil-decision"].strip(), "risk": risk,
                "signals": headers.get("x-vigil-signals", ""), "shape": "split"}
    return None


def signal_map(signals: str) -> dict[str, str]:
    """`rate=0.1;profile=warm:30;identity=user:ab` -> {"rate": "0.1", ...}."""
    return dict(part.split("=", 1) for part in signals.split(";") if "=" in part)
