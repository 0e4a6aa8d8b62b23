"""The benign background: 42 identities with varied routines that run from
the first second to the last of every run, through every scenario.

  16 shoppers on the web (three of them behind one office NAT address)
   5 business buyers (orders, invoices, exports)
   2 support agents (admin role)
   8 app users on phones (mobile networks)
   6 anonymous visitors (no account: Vigil knows them by client address)
   3 partner integrations (API keys, steady machine cadence)
   2 more shoppers sharing one household address
"""

from __future__ import annotations

import random

from . import personas as P
from .client import Client
from .sched import Actor
from .world import BROWSERS, DEVICES, World

COUNTRIES = ["DE"] * 12 + ["FR"] * 5 + ["GB"] * 5 + ["NL"] * 3 + ["US"] * 8 + ["ES"] * 2 + ["PL"] * 2 + \
            ["IT"] * 2 + ["BR", "IN", "JP", "SE", "CA"]


def background(ctx: P.Ctx, world: World, rng: random.Random, until: float) -> list[Actor]:
    actors: list[Actor] = []

    def add(name: str, who_client: Client, make):
        r = random.Random(rng.getrandbits(64))
        who = P.Who(ctx, who_client, name)
        actors.append(Actor(name, make(who, r)))

    office = world.place("DE", "home")  # one company's NAT address
    household = world.place("US", "home")
    for i in range(18):
        acc = world.account(orders=rng.randrange(1, 8))
        client = world.user_client(acc, rng.choice(BROWSERS), rng.choice(COUNTRIES))
        if i < 3:
            client.place = office
        elif i >= 16:
            client.place = household
        add(f"shopper-{i}", client, lambda who, r, acc=acc: P.shopper(who, acc, r, until))
    for i in range(5):
        acc = world.account(orders=rng.randrange(8, 25))
        client = world.user_client(acc, rng.choice(["chrome_win", "edge_win", "firefox_win"]),
                                   rng.choice(["DE", "NL", "FR", "GB", "US"]))
        add(f"buyer-{i}", client,
            lambda who, r, acc=acc: P.shopper(who, acc, r, until, action=P.account_action))
    for i in range(2):
        acc = world.account(admin=True)
        client = world.user_client(acc, "chrome_win", "DE" if i == 0 else "PL", kind="home")
        add(f"support-{i}", client,
            lambda who, r, acc=acc: P.worker(who, acc, r, until, P.support_action, median=4.0))
    for i in range(8):
        acc = world.account(orders=rng.randrange(0, 5))
        client = world.user_client(acc, rng.choice(["app_ios", "app_android"]), rng.choice(COUNTRIES), kind="mobile")
        add(f"app-{i}", client, lambda who, r, acc=acc: P.shopper(who, acc, r, until, mobile=True))
    for i in range(6):
        country = rng.choice(COUNTRIES)
        place = world.place(country, "home")
        client = Client(f"ip:{place.ip}", DEVICES[rng.choice(BROWSERS)], place)
        add(f"visitor-{i}", client, lambda who, r: P.shopper(who, None, r, until))
    for i, (device, country) in enumerate([("python_requests", "US"), ("java_client", "DE"), ("go_http", "NL")]):
        acc = world.account(orders=rng.randrange(5, 20), name=f"partner-{i}-erp")
        key = world.api_key(acc.name)
        place = world.place(country, "hosting")
        client = Client(f"key:{acc.name}", DEVICES[device], place, api_key=key)
        add(f"integration-{i}", client, lambda who, r, acc=acc: P.integration(who, acc, r, until))
    return actors
