#!/usr/bin/env python3
"""Mock ML scoring service that misbehaves on demand.

Vigil calls an external model to score requests. This mock stands in for that
model in the examples and end-to-end tests, and can be made slow, broken or
dishonest so tests can check that the filter fails safe.

Protocols:
  Vigil native:  POST /v1/score  {"features": [..], ...}
                 -> {"score": S, "confidence": C, "model": "mock", "version": "1"}
  Open Inference Protocol v2 (KServe v2):
                 GET  /v2/health/live, /v2/health/ready   -> {}
                 GET  /v2/models/{name}[/ready]           -> model metadata
                 POST /v2/models/{name}/infer             -> anomaly_score output

S = clamp(mean(features), 0, 1), unless a rule matches: with --rule I:X:S (or
POST /_control {"rule": {"feature": I, "above": X, "score": S}}, null clears
it) a request whose feature I exceeds X scores S, a stand-in for a model that
has learnt what "anomalous" looks like. Header x-mock-score overrides the
score (unclamped) and x-mock-confidence the default confidence 0.9.

Faults apply to the two scoring endpoints only; health, metadata and /_*
endpoints always behave. Chosen per run (--fault MODE, or at run time POST
/_control {"fault": MODE, "delay_ms": N}) or per request: header
x-mock-fault: MODE, or a request id (x-request-id, which Vigil forwards)
starting with "mockfault-MODE-". Per request wins. Modes:
  none, slow (sleep --slow-ms / delay_ms first), error (500), reset (TCP RST,
  no response), garbage (truncated JSON), wrong_shape, nan, out_of_range (7.5).

GET /_stats -> {"calls", "by_path", "by_fault"}; POST /_control
{"reset_stats": true} zeroes them. /_stats and /_control are not counted.
Standard library only.
"""

import argparse
import json
import math
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = (
    "none", "slow", "error", "reset", "garbage", "wrong_shape", "nan", "out_of_range",
)
DEFAULT_CONFIDENCE = 0.9
OUT_OF_RANGE_SCORE = 7.5
INPUT_NAME = "features"
OUTPUT_NAME = "anomaly_score"


class BadRequest(Exception):
    """The client sent something we cannot score: answered with HTTP 400."""


class State:
    """Run-time fault settings and call counters, shared by handler threads."""

    def __init__(self, fault: str, delay_ms: int, rule: dict | None = None):
        self.lock = threading.Lock()
        self.fault = fault
        self.delay_ms = delay_ms  # how long the "slow" fault sleeps
        self.rule = rule
        self.reset_stats()

    def reset_stats(self) -> None:
        with self.lock:
            self.calls = 0
            self.by_path = Counter()
            self.by_fault = Counter()

    def count(self, path: str, fault: str | None) -> None:
        with self.lock:
            self.calls += 1
            self.by_path[path] += 1
            if fault is not None:
                self.by_fault[fault] += 1

    def settings(self) -> dict:
        with self.lock:
            return {"fault": self.fault, "delay_ms": self.delay_ms, "rule": self.rule}

    def stats(self) -> dict:
        with self.lock:
            return {
                "calls": self.calls,
                "by_path": dict(self.by_path),
                "by_fault": dict(self.by_fault),
            }


def parse_fault(value) -> str:
    if value not in FAULTS:
        raise ValueError(f"fault must be one of {', '.join(FAULTS)}")
    return value


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


def parse_rule(value) -> dict | None:
    """A rule {"feature": I, "above": X, "score": S}, or None to clear it."""
    if value is None:
        return None
    if isinstance(value, str):  # the --rule I:X:S form
        parts = value.split(":")
        if len(parts) != 3:
            raise ValueError("rule must be FEATURE:ABOVE:SCORE")
        value = {"feature": parts[0], "above": parts[1], "score": parts[2]}
    if not isinstance(value, dict) or set(value) != {"feature", "above", "score"}:
        raise ValueError('rule must be {"feature": I, "above": X, "score": S}')
    try:
        rule = {"feature": int(value["feature"]), "above": float(value["above"]),
                "score": float(value["score"])}
    except (TypeError, ValueError):
        raise ValueError("rule fields must be numbers") from None
    if rule["feature"] < 0 or not all(map(math.isfinite, (rule["above"], rule["score"]))):
        raise ValueError("rule needs a feature index >= 0 and finite numbers")
    return rule


def reject_constant(name: str):
    raise BadRequest(f"non-finite number {name} in request")


def parse_json(body: bytes):
    try:
        return json.loads(body, parse_constant=reject_constant)
    except ValueError as err:  # includes UnicodeDecodeError
        raise BadRequest(f"invalid JSON: {err}") from None


def as_numbers(values) -> list[float]:
    """Flatten (possibly nested) lists of numbers, rejecting anything else."""
    if not isinstance(values, list):
        raise BadRequest("features must be a list of numbers")
    flat = []
    for value in values:
        if isinstance(value, list):
            flat.extend(as_numbers(value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat.append(float(value))
        else:
            raise BadRequest("features must be a list of numbers")
    return flat


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
    server_version = "mock-ml/1"
    # Headers and body go out in two writes; without this, Nagle's algorithm
    # and the client's delayed ACK hold the body back 40 ms on a kept-alive
    # connection, and the model looks slow.
    disable_nagle_algorithm = True

    def do_GET(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    # ---- routing -----------------------------------------------------------

    def dispatch(self):
        state: State = self.server.state
        try:
            body = read_body(self)
        except ValueError:
            self.close_connection = True
            self.send_json(400, {"error": "malformed request body framing"})
            return
        path = urlsplit(self.path).path
        parts = path.strip("/").split("/")
        get, post = self.command == "GET", self.command == "POST"

        try:
            if path == "/_stats" and get:
                self.send_json(200, state.stats())
            elif path == "/_control" and post:
                self.control(body)
            elif path == "/v1/score" and post:
                self.score(path, body, self.native_response)
            elif path in ("/v2/health/live", "/v2/health/ready") and get:
                state.count(path, None)
                self.send_json(200, {})
            elif parts[:2] == ["v2", "models"] and len(parts) >= 3:
                self.oip_model(path, parts[2], parts[3:], body)
            else:
                raise LookupError
        except LookupError:
            self.send_json(404, {"error": f"no route for {self.command} {path}"})
        except BadRequest as err:
            self.send_json(400, {"error": str(err)})

    def oip_model(self, path: str, name: str, rest: list[str], body: bytes):
        if rest == [] and self.command == "GET":
            self.server.state.count(path, None)
            self.send_json(200, {
                "name": name,
                "versions": ["1"],
                "platform": "mock",
                "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, -1]}],
                "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, 1]}],
            })
        elif rest == ["ready"] and self.command == "GET":
            self.server.state.count(path, None)
            self.send_json(200, {})
        elif rest == ["infer"] and self.command == "POST":
            self.score(path, body, lambda request, score, conf, fault:
                       self.oip_response(name, request, score, fault))
        else:
            raise LookupError

    def control(self, body: bytes):
        state: State = self.server.state
        changes = parse_json(body or b"{}")
        if not isinstance(changes, dict):
            raise BadRequest("body must be a JSON object")
        try:
            fault = parse_fault(changes.get("fault", state.fault))
            delay_ms = parse_delay_ms(changes.get("delay_ms", state.delay_ms))
            rule = parse_rule(changes["rule"]) if "rule" in changes else state.rule
        except ValueError as err:
            raise BadRequest(str(err)) from None
        with state.lock:
            state.fault, state.delay_ms, state.rule = fault, delay_ms, rule
        if changes.get("reset_stats"):
            state.reset_stats()
        self.send_json(200, state.settings())

    # ---- scoring -----------------------------------------------------------

    def score(self, path: str, body: bytes, render):
        """Shared flow for both protocols: pick fault, misbehave or score."""
        settings = self.server.state.settings()
        fault = settings["fault"]
        request_id = self.headers.get("x-request-id", "")
        if request_id.startswith("mockfault-"):
            fault = request_id.split("-")[1] if request_id.count("-") >= 2 else ""
        fault = self.headers.get("x-mock-fault", fault).strip().lower()
        try:
            parse_fault(fault)
        except ValueError as err:
            raise BadRequest(str(err)) from None
        self.server.state.count(path, fault)

        # Transport-level faults ignore what the client sent.
        if fault == "slow":
            time.sleep(settings["delay_ms"] / 1000)
        elif fault == "reset":
            self.reset_connection()
            return
        elif fault == "error":
            self.send_json(500, {"error": "injected fault: model failed"})
            return
        elif fault == "garbage":
            self.send_raw(200, b'{"score": ')
            return

        request = parse_json(body)
        if not isinstance(request, dict):
            raise BadRequest("body must be a JSON object")
        score = self.header_float("x-mock-score")
        if score is None:
            features = self.extract_features(path, request)
            mean = sum(features) / len(features) if features else 0.0
            score = min(1.0, max(0.0, mean))
            rule = settings["rule"]
            if rule and rule["feature"] < len(features) and features[rule["feature"]] > rule["above"]:
                score = rule["score"]
        if fault == "out_of_range":
            score = OUT_OF_RANGE_SCORE
        confidence = self.header_float("x-mock-confidence")
        if confidence is None:
            confidence = DEFAULT_CONFIDENCE
        self.send_raw(200, render(request, score, confidence, fault).encode())

    def extract_features(self, path: str, request: dict) -> list[float]:
        if path == "/v1/score":
            if "features" not in request:
                raise BadRequest('missing "features"')
            return as_numbers(request["features"])
        inputs = request.get("inputs")
        if not isinstance(inputs, list) or not inputs or not all(
            isinstance(i, dict) for i in inputs
        ):
            raise BadRequest('"inputs" must be a non-empty list of tensors')
        # Prefer the tensor named "features"; otherwise take the first one.
        tensor = next((i for i in inputs if i.get("name") == INPUT_NAME), inputs[0])
        if "data" not in tensor:
            raise BadRequest('input tensor has no "data"')
        return as_numbers(tensor["data"])

    def native_response(self, request, score, confidence, fault) -> str:
        if fault == "wrong_shape":
            return json.dumps({"scores": [1, 2]})
        if fault == "nan":
            return '{"score": NaN, "confidence": 0.9}'
        return json.dumps(
            {"score": score, "confidence": confidence, "model": "mock", "version": "1"}
        )

    def oip_response(self, name, request, score, fault) -> str:
        data, shape = [score], [1, 1]
        if fault == "wrong_shape":
            data, shape = [score, score, score], [1, 3]
        elif fault == "nan":
            data = [math.nan]  # json.dumps writes the bare token NaN
        response = {"model_name": name}
        if "id" in request:
            response["id"] = request["id"]
        response["outputs"] = [
            {"name": OUTPUT_NAME, "shape": shape, "datatype": "FP32", "data": data}
        ]
        return json.dumps(response)

    def header_float(self, name: str) -> float | None:
        raw = self.headers.get(name)
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError:
            raise BadRequest(f"{name} must be a number") from None

    # ---- wire helpers ------------------------------------------------------

    def reset_connection(self):
        """Drop the connection with a TCP RST and no HTTP response at all."""
        self.close_connection = True
        self.connection.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        # rfile holds a reference to the socket; close both so the fd really
        # closes now (and, with linger 0, sends RST instead of FIN).
        self.rfile.close()
        self.connection.close()

    def send_json(self, status: int, payload: dict) -> None:
        self.send_raw(status, json.dumps(payload).encode())

    def send_raw(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
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
    parser.add_argument("--port", type=int, default=8082, help="0 picks a free port")
    parser.add_argument("--fault", choices=FAULTS, default="none")
    parser.add_argument("--slow-ms", type=parse_delay_ms, default=5000,
                        help="how long the slow fault sleeps (default 5000)")
    parser.add_argument("--rule", type=parse_rule, default=None,
                        help="FEATURE:ABOVE:SCORE, e.g. 1:0.5:0.97 (see above)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args()

    server = Server((args.host, args.port), Handler)
    server.state = State(args.fault, args.slow_ms, args.rule)
    server.verbose = args.verbose
    serve_until_signalled(server, args.host)


if __name__ == "__main__":
    main()
