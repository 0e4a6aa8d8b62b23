"""Runs many callers at once on one clock.

Each actor is a generator. It yields
  a number      -> wait that many seconds (its think time),
  a Req         -> send it; the generator gets the Result back,
  a list of Req -> send them all at once (a page fanning out); gets the list of Results.
It returns when its part is over. Generators run on the scheduler's thread
(they only decide what to send next); requests go out on a thread pool, so a
slow answer delays only its own caller, as with real clients.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Generator

from .client import Req, Result, send


@dataclass
class Actor:
    name: str
    gen: Generator


class Clock:
    def __init__(self):
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0


class Scheduler:
    def __init__(self, port: int, clock: Clock, hard_stop: float, workers: int = 96,
                 on_result: Callable[[Result], None] | None = None):
        self.port, self.clock, self.hard_stop = port, clock, hard_stop
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lab")
        self.heap: list = []
        self.seq = itertools.count()
        self.cv = threading.Condition()
        self.in_flight = 0
        self.results: list[Result] = []
        self.errors: list[str] = []
        self.on_result = on_result

    def add(self, actor: Actor, at: float = 0.0) -> None:
        with self.cv:
            heapq.heappush(self.heap, (at, next(self.seq), actor, None))
            self.cv.notify()

    def run(self) -> list[Result]:
        while True:
            with self.cv:
                while True:
                    now = self.clock.now()
                    if self.heap and self.heap[0][0] <= now:
                        _, _, actor, value = heapq.heappop(self.heap)
                        break
                    if not self.heap and self.in_flight == 0:
                        self.pool.shutdown(wait=True)
                        return self.results
                    if now > self.hard_stop + 20:
                        raise RuntimeError("the lab's requests did not finish 20 s after the run's end")
                    timeout = (self.heap[0][0] - now) if self.heap else 0.5
                    self.cv.wait(timeout=max(0.0, min(timeout, 0.5)))
            self._step(actor, value)

    def _step(self, actor: Actor, value) -> None:
        try:
            item = actor.gen.send(value)
        except StopIteration:
            return
        except Exception as err:  # a broken scenario is the lab's failure: say which
            self.errors.append(f"{actor.name}: {type(err).__name__}: {err}")
            raise
        now = self.clock.now()
        if isinstance(item, (int, float)):
            if now + item <= self.hard_stop:
                self.add(actor, now + max(0.0, float(item)))
            return
        reqs = [item] if isinstance(item, Req) else list(item)
        if now > self.hard_stop or not reqs:
            return
        single = isinstance(item, Req)
        box: list = [None] * len(reqs)
        remaining = [len(reqs)]
        with self.cv:
            self.in_flight += len(reqs)

        def done(i, fut):
            res = fut.result()
            with self.cv:
                self.results.append(res)
                box[i] = res
                remaining[0] -= 1
                self.in_flight -= 1
                if remaining[0] == 0:
                    heapq.heappush(self.heap, (self.clock.now(), next(self.seq), actor, box[0] if single else box))
                self.cv.notify()
            if self.on_result:
                self.on_result(res)

        for i, r in enumerate(reqs):
            fut = self.pool.submit(send, self.port, r, self.clock.t0)
            fut.add_done_callback(lambda f, i=i: done(i, f))
