"""Credential stuffing across many identities from many client addresses.

The same breach-list replay, spread over a residential proxy network: every
attempt comes from another address (about 170 in a dozen countries), so no
address, and no account, makes more than a few requests.
"""

from .stuffing_few_ips import StuffingFewIps

COUNTRIES = ["US", "BR", "IN", "VN", "ID", "RU", "TR", "UA", "NG", "DE", "FR", "PL", "IT", "ES"]


class StuffingManyIps(StuffingFewIps):
    name = "stuffing_many_ips"
    summary = "~70 fresh accounts x 2-4 failed logins, ~8/s, each from another residential address"

    def places(self, world, rng):
        return [world.place(rng.choice(COUNTRIES), "home") for _ in range(170)]
