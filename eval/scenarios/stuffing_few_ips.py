"""Credential stuffing across many fresh identities from few client addresses.

A stuffing tool replays a breach list against the login: about 70 accounts
this shop has never seen, 2-4 passwords each (all wrong: 401), about 8
attempts a second, from 3 rented servers. The login front-end names the
account each attempt is for in x-user-id (the identity Vigil sees), so every
account is a fresh identity with a handful of requests; only the client
address, ASN and TLS fingerprint tie the attempts together (secondary keys).
The tool rotates browser user agents.
"""

import random

from lab import personas as P
from lab.client import Client
from lab.scenario import Scenario, Window
from lab.sched import Actor
from lab.world import BROWSERS, DEVICES, Device


class StuffingFewIps(Scenario):
    name = "stuffing_few_ips"
    kind = "attack"
    summary = "~70 fresh accounts x 2-4 failed logins, ~8/s, from 3 addresses"
    rate = 8.0
    accounts = 70

    def places(self, world, rng):
        return [world.place("FR", "hosting", asn=16276) for _ in range(3)]

    def actors(self, ctx, world, rng, w: Window):
        places = self.places(world, rng)
        ja4 = DEVICES["go_http"].ja4
        attempts = []
        for _ in range(self.accounts):
            name = world.username()  # never registered: not an account here
            attempts += [name] * rng.randrange(2, 5)
        rng.shuffle(attempts)
        clients = {}

        def client_for(place, ua):
            key = (place.ip, ua)
            if key not in clients:
                clients[key] = Client(f"ip:{place.ip}", Device(DEVICES[ua].user_agent, ja4), place)
            return clients[key]

        who = P.Who(ctx, None, f"{self.name}-tool", self.name, "attack")
        return [Actor(who.actor, self.run(who, attempts, places, client_for, random.Random(rng.getrandbits(64)), w))]

    def run(self, who, attempts, places, client_for, rng, w):
        yield w.onset - who.ctx.now()
        for name in attempts:
            if who.ctx.now() >= w.stop:
                return
            who.client = client_for(rng.choice(places), rng.choice(BROWSERS))
            req = who.req("POST", "/api/login", {"username": name, "password": f"{rng.getrandbits(32):x}"}, user=name)
            yield req
            yield rng.expovariate(self.rate)
