"""Forced browsing (one of the lab's own).

A vulnerability scanner on a rented server, no account, probes for
forgotten files and consoles from a wordlist (/.env, /.git/config,
/actuator/env, /wp-login.php, backup archives, debug routes...), about 6
requests a second. Nearly everything answers 404; the few real API paths in
its list answer 200 or 401.
"""

import random

from lab import personas as P
from lab.client import Client
from lab.scenario import Scenario, Window
from lab.sched import Actor
from lab.world import DEVICES

WORDLIST = """
/.env /.env.local /.env.production /.git/config /.git/HEAD /.svn/entries /.DS_Store /config.json /config.yml
/backup.zip /backup.sql /db.sql /dump.sql /site.tar.gz /www.zip /wp-login.php /wp-admin/ /xmlrpc.php
/phpmyadmin/ /pma/ /adminer.php /server-status /server-info /actuator /actuator/env /actuator/health
/actuator/heapdump /api/v1/debug /api/debug/vars /debug/pprof/ /console /h2-console /swagger.json
/api/swagger.json /openapi.json /v2/api-docs /graphql /api/graphql /api/internal/metrics /metrics
/admin/config.php /administrator/ /manager/html /jenkins/ /solr/ /_cat/indices /.aws/credentials
/id_rsa /.ssh/id_rsa /WEB-INF/web.xml /crossdomain.xml /cgi-bin/test.cgi /shell.php /cmd.php /test.php
/info.php /phpinfo.php /api/users /api/orders /api/export /api/products /api/v1/users /api/v2/users
/.well-known/security.txt /robots.txt /sitemap.xml /api/admin /api/keys /api/config /api/settings
/storage/logs/laravel.log /logs/error.log /error_log /app.log /.htaccess /.htpasswd /web.config
""".split()


class ForcedBrowsing(Scenario):
    name = "forced_browsing"
    kind = "attack"
    summary = "scanner probes a wordlist of hidden paths, ~6 req/s, mostly 404"

    def actors(self, ctx, world, rng, w: Window):
        place = world.place("DE", "hosting", asn=24940)
        client = Client(f"ip:{place.ip}", DEVICES["go_http"], place)
        who = P.Who(ctx, client, f"{self.name}-scanner", self.name, "attack")
        return [Actor(who.actor, self.scan(who, random.Random(rng.getrandbits(64)), w))]

    def scan(self, who, rng, w):
        yield w.onset - who.ctx.now()
        words = list(WORDLIST)
        rng.shuffle(words)
        i = 0
        while who.ctx.now() < w.stop:
            yield who.get(words[i % len(words)] + ("" if i < len(words) else f"?v={i // len(words)}"))
            i += 1
            yield rng.uniform(0.1, 0.23)
