"""The simulated world: places, devices, accounts and the objects they own.

Everything here is only header values: no address below is ever contacted
(all traffic goes to Envoy on 127.0.0.1). Addresses are drawn from a few /16s
per network so that callers of one ISP share prefixes, as real ones do, which
secondary keys (a client /24, the ASN) will be able to use.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .client import Client, Device, Place

# country -> [(asn, kind, /16 prefixes)]; kind: home (broadband), mobile, hosting, office
NETWORKS: dict[str, list[tuple[int, str, list[str]]]] = {
    "DE": [(3320, "home", ["84.150", "91.64", "79.212"]), (3209, "home", ["88.64", "94.134"]),
           (6805, "mobile", ["77.180"]), (24940, "hosting", ["95.216", "135.181"])],
    "FR": [(3215, "home", ["90.12", "86.246"]), (12322, "home", ["82.64", "88.120"]),
           (16276, "hosting", ["51.75", "145.239"])],
    "GB": [(2856, "home", ["81.129", "86.128"]), (5089, "home", ["82.0", "86.0"])],
    "NL": [(1136, "home", ["77.160", "84.24"]), (33915, "home", ["62.131"])],
    "ES": [(3352, "home", ["83.32", "88.0"]), (12430, "mobile", ["37.11"])],
    "US": [(7922, "home", ["73.15", "98.204", "24.8"]), (7018, "home", ["99.1", "107.77"]),
           (21928, "mobile", ["172.56"]), (16509, "hosting", ["52.14", "54.210", "3.85"]),
           (14061, "hosting", ["159.89", "167.99"]), (396982, "hosting", ["34.72", "35.196"])],
    "BR": [(28573, "home", ["177.32", "189.6"]), (26599, "mobile", ["191.176"])],
    "IN": [(55836, "mobile", ["49.36", "106.192"]), (9829, "home", ["117.200"])],
    "JP": [(2516, "home", ["106.128", "111.86"]), (4713, "home", ["153.128"])],
    "PL": [(5617, "home", ["83.4", "89.64"])],
    "IT": [(3269, "home", ["79.18", "87.0"])],
    "SE": [(3301, "home", ["78.64"])],
    "CA": [(577, "home", ["70.48", "174.88"])],
    "AU": [(1221, "home", ["110.140", "121.200"])],
    "VN": [(7552, "home", ["113.160", "171.224"]), (45899, "home", ["14.160"])],
    "RU": [(12389, "home", ["95.24", "178.64"]), (8359, "mobile", ["83.220"])],
    "NG": [(29465, "mobile", ["105.112"])],
    "ID": [(7713, "home", ["36.64", "180.240"])],
    "UA": [(15895, "home", ["46.211"])],
    "TR": [(9121, "home", ["78.160", "88.224"])],
}

# Devices: the user agent and a JA4 TLS fingerprint that goes with the client
# stack (fingerprints are synthetic but stable per stack, as real ones are).
DEVICES: dict[str, Device] = {
    "chrome_win": Device("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                         "Chrome/124.0.0.0 Safari/537.36", "t13d1516h2_8daaf6152771_02713d6af862"),
    "chrome_mac": Device("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
                         "Chrome/124.0.0.0 Safari/537.36", "t13d1516h2_8daaf6152771_02713d6af862"),
    "edge_win": Device("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                       "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.67", "t13d1516h2_8daaf6152771_02713d6af862"),
    "firefox_linux": Device("Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
                            "t13d1715h2_5b57614c22b0_3d5424432f57"),
    "firefox_win": Device("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
                          "t13d1715h2_5b57614c22b0_3d5424432f57"),
    "safari_mac": Device("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4_1) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                         "Version/17.4.1 Safari/605.1.15", "t13d2014h2_a09f3c656075_14788d8d241b"),
    "safari_ios": Device("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 "
                         "(KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1",
                         "t13d2014h2_a09f3c656075_14788d8d241b"),
    "app_ios": Device("ShopApp/5.2.1 (iPhone15,2; iOS 17.4.1; Scale/3.00)", "t13d2013h2_a09f3c656075_e42f34c56612"),
    "app_android": Device("ShopApp/5.2.1 (Android 14; Pixel 7; okhttp/4.12.0)", "t13d1713h2_5b57614c22b0_b2c1e9a6d7c5"),
    "python_requests": Device("python-requests/2.31.0", "t13d1812h1_85036bcba153_375ca2c5e164"),
    "go_http": Device("Go-http-client/1.1", "t13d1312h2_e8a523a41297_ef7df7f74e48"),
    "java_client": Device("Apache-HttpClient/5.2.1 (Java/17.0.10)", "t13d1512h2_8b80da21ef18_8f8d1b1e6a41"),
    "curl": Device("curl/8.5.0", "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6"),
    "headless": Device("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.6367.60 "
                       "Safari/537.36", "t13d1516h2_8daaf6152771_e5627efa2ab1"),
}
BROWSERS = ["chrome_win", "chrome_mac", "edge_win", "firefox_linux", "firefox_win", "safari_mac", "safari_ios"]

FIRST = ["anna", "ben", "clara", "david", "elena", "felix", "greta", "hugo", "ines", "jonas", "karla", "liam",
         "mara", "nils", "olga", "paul", "queenie", "rafael", "sofia", "tom", "ute", "victor", "wen", "xavier",
         "yara", "zoe", "amir", "bea", "chen", "dario", "emma", "farid", "gina", "hiro", "ivan", "julia", "kofi",
         "lena", "marco", "nora", "omar", "priya", "rosa", "sven", "tara", "umar", "vera", "will", "yusuf", "ana"]
LAST = ["schmidt", "martin", "smith", "jansen", "garcia", "silva", "kumar", "tanaka", "nowak", "rossi", "berg",
        "brown", "weber", "dubois", "lopez", "sato", "meyer", "moreau", "khan", "olsen", "costa", "ito", "fischer"]

PRODUCTS = 8000  # catalogue ids 1..PRODUCTS, a few of them withdrawn (404)


@dataclass
class Account:
    name: str
    uid: int
    password: str
    admin: bool = False
    orders: list[int] = field(default_factory=list)
    invoices: list[int] = field(default_factory=list)
    tickets: list[int] = field(default_factory=list)


class World:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.accounts: dict[str, Account] = {}
        self.api_keys: dict[str, str] = {}
        self.missing_products = set(rng.sample(range(1, PRODUCTS + 1), PRODUCTS // 30))
        self._next_order = 480_000 + rng.randrange(10_000)
        self._next_invoice = 90_000 + rng.randrange(5_000)
        self._next_ticket = 7_000 + rng.randrange(1_000)
        self._names: set[str] = set()
        self._uids: set[int] = set()
        self._ips: set[str] = set()

    # --- accounts and objects ------------------------------------------------
    def username(self) -> str:
        while True:
            name = f"{self.rng.choice(FIRST)}.{self.rng.choice(LAST)}{self.rng.randrange(10, 99)}"
            if name not in self._names:
                self._names.add(name)
                return name

    def account(self, admin: bool = False, orders: int = 0, name: str | None = None) -> Account:
        name = name or self.username()
        while True:
            uid = self.rng.randrange(100_000, 999_999)
            if uid not in self._uids:
                self._uids.add(uid)
                break
        acc = Account(name, uid, f"pw-{self.rng.getrandbits(40):x}", admin)
        self.accounts[name] = acc
        self.give_orders(acc, orders)
        return acc

    def give_orders(self, acc: Account, n: int) -> None:
        """Order, invoice and ticket ids are global sequences, so one user's ids
        are scattered among everyone else's, as in a real database."""
        for _ in range(n):
            self._next_order += self.rng.randrange(1, 40)
            acc.orders.append(self._next_order)
            if self.rng.random() < 0.7:
                self._next_invoice += self.rng.randrange(1, 10)
                acc.invoices.append(self._next_invoice)
        for _ in range(self.rng.randrange(0, 3)):
            self._next_ticket += self.rng.randrange(1, 6)
            acc.tickets.append(self._next_ticket)

    def api_key(self, owner: str) -> str:
        key = f"sk_live_{self.rng.getrandbits(96):024x}"
        self.api_keys[key] = owner
        return key

    def product(self) -> int:
        """A product a real shopper would look at: mostly popular ones, never a withdrawn one."""
        while True:
            pid = min(PRODUCTS, int(self.rng.paretovariate(0.6)) + self.rng.randrange(0, 40))
            if pid not in self.missing_products:
                return pid

    # --- places and clients ------------------------------------------------------
    def place(self, country: str, kind: str | None = None, asn: int | None = None, geo: bool = True) -> Place:
        nets = [n for n in NETWORKS[country] if (kind is None or n[1] == kind) and (asn is None or n[0] == asn)]
        if not nets:
            nets = NETWORKS[country]
        number, _, prefixes = self.rng.choice(nets)
        while True:
            ip = f"{self.rng.choice(prefixes)}.{self.rng.randrange(0, 256)}.{self.rng.randrange(1, 255)}"
            if ip not in self._ips:
                self._ips.add(ip)
                break
        return Place(ip, country if geo else None, number if geo else None)

    def user_client(self, acc: Account, device: str, country: str, kind: str = "home", geo: bool = True) -> Client:
        return Client(f"user:{acc.name}", DEVICES[device], self.place(country, kind, geo=geo), user=acc.name)

    def upstream_doc(self) -> dict:
        """The world as the recording upstream needs it (POST /_lab/world)."""
        doc = {"users": {a.name: {"uid": a.uid, "password": a.password, "admin": a.admin}
                         for a in self.accounts.values()},
               "orders": {}, "invoices": {}, "tickets": {}, "api_keys": dict(self.api_keys),
               "products": PRODUCTS, "missing_products": sorted(self.missing_products)}
        for a in self.accounts.values():
            for kind in ("orders", "invoices", "tickets"):
                for oid in getattr(a, kind):
                    doc[kind][str(oid)] = a.name
        return doc
