"""Training on the CPU reuses freed memory: far fewer page faults, the same weights bit for bit."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from jule_kit.allocator import GLIBC, reuse_freed_memory

# Two periods of the MNIST CNN on 500 real images, in a fresh process; prints the page faults of the
# second (the same batches and triplets as the first: what a steady state allocates) and a hash of the
# weights it ends with. argv: "reuse" (the engine as shipped) or
# "system" (the allocator left as the process found it).
CHILD = r"""
import hashlib, json, resource, sys, tempfile
from pathlib import Path
import numpy as np, torch
import jule_kit.engine as engine
from jule_kit.recipe import load_recipe
from jule_kit.rundir import RunDir

if sys.argv[1] == "system":
    engine.reuse_freed_memory = lambda: False
recipe = load_recipe(Path(sys.argv[2]) / "recipes" / "jule_mnist_test.yaml",
                     ["data.subset=500", "train.epochs=1", "device=cpu"])
exp = engine.Experiment(recipe, RunDir(Path(tempfile.mkdtemp())))
data = exp.load_data()
images, labels = torch.as_tensor(data.images), np.asarray(data.labels)
torch.manual_seed(0)
model = exp.build_model(data)
t = exp.train
optimizer = torch.optim.SGD(model.parameters(), lr=t["lr"], momentum=t["momentum"], dampening=t["dampening"],
                            weight_decay=t["weight_decay"])
with exp.deterministic():
    step = exp.train_period(model, optimizer, images, labels, 1, 0)[0]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    exp.train_period(model, optimizer, images, labels, 1, step)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.state_dict().values())).hexdigest()
print(json.dumps({"faults": faults, "weights": digest}))
"""


def train_in_a_fresh_process(mode: str, data_dir) -> dict:
    env = {**os.environ, "JULEKIT_DATA": str(data_dir)}
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(REPO)], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the allocator setting is glibc's")
def test_training_on_the_cpu_reuses_freed_memory_with_the_same_weights(data_dir):
    shipped = train_in_a_fresh_process("reuse", data_dir)
    system = train_in_a_fresh_process("system", data_dir)
    assert shipped["weights"] == system["weights"]
    # glibc as shipped maps fresh pages for every block of the step's activations and gradients; with the
    # blocks kept, what faults is the threads' own memory (0-5,400 here, against 7,700-30,000 without)
    assert shipped["faults"] * 2 < system["faults"], (shipped["faults"], system["faults"])


def test_reuse_freed_memory_says_whether_it_applies():
    assert reuse_freed_memory() is GLIBC
    assert reuse_freed_memory() is GLIBC  # a second call changes nothing
