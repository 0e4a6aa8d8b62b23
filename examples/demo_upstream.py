#!/usr/bin/env python3
"""Demo API upstream for the Vigil examples and end-to-end tests.

Envoy (with the Vigil filter in front) forwards client traffic here. The
server echoes what it received -- method, path, headers (as Envoy rewrote
them) and body size -- so tests can see exactly what reached the upstream.

Knobs for tests:
  /status/NNN         answer with status NNN (200..599), same JSON body
  /slow/MS            sleep MS milliseconds (capped at 30000) before answering
  --fail-rate F       answer that fraction (0..1) of requests with 503
  --delay-ms N        add a fixed delay to every response
  POST /_control      change fail_rate / delay_ms at run time, e.g.
                      {"fail_rate": 0.5, "delay_ms": 100}; returns settings
                      (GET /_control just returns them)

/_control itself is never delayed or failed. Standard library only.
"""

import argparse
import json
import math
import random
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SERVICE = "demo-upstream"
SLOW_CAP_MS = 30_000


class Settings:
    """Run-time adjustable fault knobs, shared by all handler threads."""

    def __init__(self, fail_rate: float, delay_ms: int):
        self._lock = threading.Lock()
        self.fail_rate = fail_rate
        self.delay_ms = delay_ms

    def snapshot(self) -> dict:
        with self._lock:
            return {"fail_rate": self.fail_rate, "delay_ms": self.delay_ms}

    def update(self, changes: dict) -> None:
        """Validate everything first, then apply atomically."""
        fail_rate = parse_fail_rate(changes.get("fail_rate", 0))
        delay_ms = parse_delay_ms(changes.get("delay_ms", 0))
        with self._lock:
            if "fail_rate" in changes:
                self.fail_rate = fail_rate
            if "delay_ms" in changes:
                self.delay_ms = delay_ms


def parse_fail_rate(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("fail_rate must be a number in [0, 1]")
    try:
        rate = float(value)
    except ValueError:
        rate = math.nan
    if not 0.0 <= rate <= 1.0:  # also rejects NaN
        raise ValueError("fail_rate must be a number in [0, 1]")
    return rate


def parse_delay_ms(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("delay_ms must be a non-negative integer")
    try:
        delay = int(value)
    except (ValueError, OverflowError):  # junk string, Infinity
        delay = -1
    if delay < 0:
        raise ValueError("delay_ms must be a non-negative integer")
    return delay


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """Read the request body (Content-Length or chunked) so keep-alive works."""
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                # Skip trailers up to the terminating blank line.
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()  # CRLF after each chunk
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length > 0 else b""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response sets Content-Length
    # Headers and body go out in two writes: no Nagle delay on kept-alive connections.
    disable_nagle_algorithm = True
    server_version = "demo-upstream/1"

    # Answer every method, including ones http.server has no do_X for.
    def __getattr__(self, name):
        if name.startswith("do_"):
            return self.handle_any
        raise AttributeError(name)

    def handle_any(self):
        try:
            body = read_body(self)
        except ValueError:
            self.close_connection = True
            self.send_json(400, {"error": "malformed request body framing"})
            return
        path = urlsplit(self.path).path

        if path == "/_control":
            self.handle_control(body)
            return

        settings = self.server.settings.snapshot()
        echo = {
            "service": SERVICE,
            "method": self.command,
            "path": self.path,
            "headers": self.lowered_headers(),
            "body_bytes": len(body),
        }

        status = 200
        extra_sleep_ms = 0
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "status":
            try:
                status = int(parts[1])
            except ValueError:
                status = -1
            if not 200 <= status <= 599:
                self.send_json(400, {"error": "status must be an integer in 200..599"})
                return
        elif len(parts) == 2 and parts[0] == "slow":
            try:
                extra_sleep_ms = min(int(parts[1]), SLOW_CAP_MS)
            except ValueError:
                extra_sleep_ms = -1
            if extra_sleep_ms < 0:
                self.send_json(400, {"error": "slow takes a non-negative integer of ms"})
                return

        delay_ms = settings["delay_ms"] + extra_sleep_ms
        if delay_ms:
            time.sleep(delay_ms / 1000)
        if settings["fail_rate"] and random.random() < settings["fail_rate"]:
            status = 503
        self.send_json(status, echo)

    def handle_control(self, body: bytes):
        if self.command == "POST":
            try:
                changes = json.loads(body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("body must be a JSON object")
                self.server.settings.update(changes)
            except ValueError as err:
                self.send_json(400, {"error": str(err)})
                return
        elif self.command not in ("GET", "HEAD"):
            self.send_json(405, {"error": "use GET or POST"})
            return
        self.send_json(200, self.server.settings.snapshot())

    def lowered_headers(self) -> dict:
        headers = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return headers

    def send_json(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if status in (204, 304):  # these must carry neither body nor length
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format, *args):
        if self.server.verbose:
            super().log_message(format, *args)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # Clients hanging up mid-response (timeouts in tests) are expected.
        if self.verbose or not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def serve_until_signalled(server: ThreadingHTTPServer, host: str) -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"listening on {host}:{server.server_address[1]}", flush=True)
    stop.wait()
    server.shutdown()
    server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    parser.add_argument("--fail-rate", type=parse_fail_rate, default=0.0)
    parser.add_argument("--delay-ms", type=parse_delay_ms, default=0)
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args()

    server = Server((args.host, args.port), Handler)
    server.settings = Settings(args.fail_rate, args.delay_ms)
    server.verbose = args.verbose
    serve_until_signalled(server, args.host)


if __name__ == "__main__":
    main()
