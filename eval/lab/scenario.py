"""What a scenario is, and when each one happens in a run.

One run is one Envoy and one clock. First every identity warms up (the
background, and the established identities the scenarios need: victims, the
BOLA user, the key owner...), then the scenarios follow one another in slots,
with the background running throughout. A slot is

    lead (benign only) | onset ... attack ... stop | tail (benign only)

and a scenario is judged on its own window (lead to tail). "Long" scenarios
(a slow ramp, a release, a traveller who stays abroad) begin at a slot's
onset and last to the end of the run, overlapping later slots. Their
subjects are judged only in their own row (and in the totals), so one
scenario's aftermath is never charged to another.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .personas import Ctx
from .sched import Actor
from .world import World

WARMUP = 170.0   # s: profiles past min_observations, traffic baselines past their warm-up
LEAD = 5.0
ATTACK = 22.0
TAIL = 5.0
SLOT = LEAD + ATTACK + TAIL


@dataclass
class Window:
    start: float  # benign traffic counts from here
    onset: float
    stop: float   # the scenario's own traffic stops (run end for long ones)
    end: float    # benign traffic counts up to here


class Scenario:
    """Subclasses set the class attributes and build their actors."""

    name = ""
    kind = "attack"      # attack | benign
    long = False         # lasts from its onset to the end of the run
    summary = ""

    def warm(self, ctx: Ctx, world: World, rng: random.Random, w: Window) -> list[Actor]:
        """Actors that start at time 0 (established identities); default none."""
        return []

    def actors(self, ctx: Ctx, world: World, rng: random.Random, w: Window) -> list[Actor]:
        """Actors that start at the window's start; default none."""
        return []

    @staticmethod
    def role_switch(w: Window, before: str, after: str):
        return lambda t: after if t >= w.onset else before


def timeline(scenarios: list[Scenario], slots: list[str], long_at: dict[str, int]) -> tuple[dict[str, Window], float]:
    """Windows for every scenario: `slots` names the slot scenarios in order;
    `long_at` puts each long scenario's onset at a slot's onset."""
    windows: dict[str, Window] = {}
    for i, name in enumerate(slots):
        start = WARMUP + i * SLOT
        windows[name] = Window(start, start + LEAD, start + LEAD + ATTACK, start + SLOT)
    run_end = WARMUP + len(slots) * SLOT
    for name, i in long_at.items():
        onset = WARMUP + i * SLOT + LEAD
        windows[name] = Window(onset - LEAD, onset, run_end, run_end)
    missing = {s.name for s in scenarios} - set(windows)
    if missing:
        raise ValueError(f"scenarios without a place in the timeline: {sorted(missing)}")
    return windows, run_end
