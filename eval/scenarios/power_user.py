"""Benign: power users, high but steady.

Two merchandisers (admin role) who edit the catalogue all day, a request
every 0.5-2 s, for the whole run: far above everyone else's pace, but the
same pace, the same endpoints and the same place all along. Judged from the
end of the warm-up to the end of the run.
"""

import random

from lab import personas as P
from lab.scenario import Scenario, Window
from lab.sched import Actor


class PowerUser(Scenario):
    name = "power_user"
    kind = "benign"
    long = True
    summary = "2 merchandisers at a request every 0.5-2 s, steady all run"

    def warm(self, ctx, world, rng, w: Window):
        actors = []
        for k, country in enumerate(["DE", "FR"]):
            acc = world.account(admin=True)
            client = world.user_client(acc, "chrome_win", country)
            who = P.Who(ctx, client, f"{self.name}-{k}", self.name, "benign")
            actors.append(Actor(who.actor, P.worker(who, acc, random.Random(rng.getrandbits(64)), ctx.end,
                                                    P.merch_action, median=1.0, lo=0.5, hi=2.0,
                                                    session_len=(120, 200))))
        return actors
