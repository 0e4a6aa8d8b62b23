"""Benign: new users arriving (one of the lab's own).

A newsletter goes out: ten people who never used the shop sign up within
twenty seconds, log in and browse like anyone else. Four of them are
colleagues behind one office address; two follow a stale link to a
withdrawn product (404). They are fresh identities, as every attacker in
the lab's fresh-identity scenarios is.
"""

import random

from lab import personas as P
from lab.scenario import Scenario, Window
from lab.sched import Actor
from lab.world import BROWSERS, Account


class NewUsers(Scenario):
    name = "new_users"
    kind = "benign"
    long = True
    summary = "10 new accounts sign up and browse (4 behind one office address)"

    def actors(self, ctx, world, rng, w: Window):
        office = world.place("GB", "home")
        actors = []
        for k in range(10):
            name = world.username()
            password = f"pw-{rng.getrandbits(40):x}"
            client = world.user_client(world.account(name=name), rng.choice(BROWSERS), rng.choice(["GB", "DE", "US", "FR"]))
            # The account exists only once it signs up: drop it from the world the upstream starts with.
            del world.accounts[name]
            if k < 4:
                client.place = office
            who = P.Who(ctx, client, f"{self.name}-{k}", self.name, "benign")
            actors.append(Actor(who.actor, self.life(who, world, name, password, k < 2,
                                                     random.Random(rng.getrandbits(64)), w)))
        return actors

    def life(self, who, world, name, password, stale_link, rng, w):
        yield w.onset - who.ctx.now() + rng.uniform(0, 20)
        if stale_link:
            yield who.get(f"/api/products/{min(world.missing_products)}")
            yield P.think(rng)
        yield who.req("POST", "/api/signup", {"username": name, "password": password, "newsletter": True})
        yield P.think(rng, 2.0)
        acc = Account(name, 0, password)
        yield from P.shopper(who, acc, rng, who.ctx.end, start_delay=0)
