"""--ml: the reference model server of examples/model_server/ in the loop.

The model is trained the way its README says: on features Vigil exported
from benign traffic. The lab makes that traffic itself, in a separate short
Envoy run (another seed, so the model never saw the requests it later
judges) of the background population and of every benign change the lab
judges (power users, a traveller, new users, fan-out pages, adopters, a
release): a week of a real API's traffic holds all of these, and a model
that never saw a heavy user finds every heavy user anomalous. No attack is
in it. It then trains an isolation forest with
examples/model_server/train.py, and serves it with Seldon MLServer (OIP v2)
on free loopback ports. The lab's Envoy then calls it in `cascade` mode
(eval/vigil-ml.json), as tests/e2e/test_model_server.py does inline.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
import urllib.request
from pathlib import Path

from .population import background
from .personas import Ctx
from .scenario import Window
from .sched import Clock, Scheduler
from .stack import ROOT, LabStack, Process, free_port, load_config, wait_for
from .world import World

VENV = Path(os.environ.get("MLSERVER_VENV", ROOT / ".venv-mlserver"))
TRAIN_S = 120.0


def train(seed: int, workdir: Path, log, benign=()) -> Path:
    """Exports features from TRAIN_S seconds of benign traffic (the background
    and the `benign` scenarios) and trains on them."""
    if not (VENV / "bin" / "mlserver").exists():
        raise RuntimeError(f"no MLServer in {VENV}: run `make setup-model-server`")
    export_dir = workdir / "export"
    export_dir.mkdir(parents=True, exist_ok=True)
    config = load_config(False, {"log_record": "all", "ml_model_config": {"export_features": True}})
    rng = random.Random(f"train-{seed}")
    world = World(rng)
    clock = Clock()
    stack = LabStack(export_dir, config)
    with stack:
        sched = Scheduler(stack.port, clock, TRAIN_S)
        ctx = Ctx(clock, world, TRAIN_S, sched.results)
        actors = background(ctx, world, rng, TRAIN_S)
        # The benign changes, from the start (their onsets 20 s in).
        w = Window(start=0.0, onset=20.0, stop=TRAIN_S, end=TRAIN_S)
        for sc in benign:
            r = random.Random(rng.getrandbits(64))
            actors += sc.warm(ctx, world, r, w) + sc.actors(ctx, world, r, w)
        stack.upstream_call("POST", "/_lab/world", world.upstream_doc())
        clock.t0 = time.monotonic()
        for a in actors:
            sched.add(a, 0.0)
        log(f"ml: exporting features from {TRAIN_S:.0f} s of benign traffic ({len(actors)} actors)")
        sched.run()
    model_dir = workdir / "model"
    out = subprocess.run([str(VENV / "bin" / "python"), "examples/model_server/train.py",
                          "--input", str(stack.access_log), "--out", str(model_dir),
                          "--seed", str(seed),
                          # A couple of minutes of traffic: the hour of day would make every
                          # later hour look new to the forest (see the model server's README).
                          "--ignore-features", "hour_sin,hour_cos"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"train.py failed:\n{out.stdout}\n{out.stderr}")
    log("ml: " + out.stdout.strip().replace("\n", "\nml: "))
    return model_dir


def serve(model_dir: Path, workdir: Path) -> tuple[Process, int]:
    """MLServer on free loopback ports; returns the process and its HTTP port."""
    port = free_port()
    settings_path = model_dir / "settings.json"
    settings = json.loads(settings_path.read_text())
    settings.update(http_port=port, grpc_port=free_port(), metrics_port=free_port())
    settings_path.write_text(json.dumps(settings))
    server = Process("mlserver", [str(VENV / "bin" / "mlserver"), "start", str(model_dir)], workdir / "mlserver.log")

    def ready():
        if server.proc.poll() is not None:
            raise RuntimeError(f"MLServer exited:\n{server.tail()}")
        try:
            url = f"http://127.0.0.1:{port}/v2/models/vigil-iforest/ready"
            return urllib.request.urlopen(url, timeout=2).status == 200
        except OSError:
            return False
    try:
        wait_for(ready, timeout=90, what="MLServer ready")
    except BaseException:
        server.stop()
        raise
    return server, port
