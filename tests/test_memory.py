"""No dense N×N or C×C matrix: graph + agglomeration of 20,000 points stay far below one.

A dense float64 20000×20000 matrix is 3.2 GB; the peak RSS growth of a child process that
builds the K_s = 20 graph and agglomerates 20,000 points down to 50 clusters must stay
under half of that. The child runs alone so that the test process's own allocations do
not count, and its peak is its own (VmHWM; ``ru_maxrss`` would carry the test runner's).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

N = 20_000
DENSE_F64 = N * N * 8  # 3.2 GB

CHILD = textwrap.dedent(
    """
    import json, time
    import numpy as np
    import torch
    from jule_kit.hookspecs import ForwardContext
    from jule_kit.metrics import nmi
    from jule_kit.plugins.affinity.knn_gaussian import KnnGaussian
    from jule_kit.plugins.clusterer.agglomerative import Agglomerative
    from jule_kit.plugins.initializer.path_integral import PathIntegralInit
    from jule_kit.plugins.linkage.gdl import GDL

    import sys
    sys.path.insert(0, "bench")  # the benchmarks' RSS readings, so test and bench measure alike
    from clusterbench import peak_rss_bytes as peak, rss_now_bytes as rss_now

    rng = np.random.default_rng(0)
    n, d, k = N_SAMPLES, 32, 50
    centres = rng.normal(scale=3.0, size=(k, d))
    y = rng.integers(0, k, size=n)
    x = torch.from_numpy((centres[y] + rng.normal(size=(n, d))).astype(np.float32))
    ks = []
    aff = KnnGaussian(k_s=20, normalize="none")

    def build_graph(f, k=None):
        ks.append(k)
        return aff.build(f, k)

    ctx = ForwardContext(period=1, n_target=k, seed=0, build_graph=build_graph,
                         initializer=PathIntegralInit(), linkage=GDL())
    t0 = time.time()
    before = rss_now()
    labels = Agglomerative(eta=1.0, k_c=5, merge_first_period=True).forward(x, None, ctx)
    seconds = time.time() - t0
    print(json.dumps({"rss_before": before, "peak_after": peak(), "n_clusters": int(labels.max()) + 1,
                      "n_labels": int(labels.shape[0]), "nmi": nmi(y, labels), "seconds": seconds,
                      "graph_ks": ks}))
    """
).replace("N_SAMPLES", str(N))


@pytest.mark.slow
def test_graph_and_agglomeration_stay_sparse():
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = report["peak_after"] - report["rss_before"]
    assert growth < DENSE_F64 / 2, f"peak RSS grew by {growth / 1e9:.2f} GB during graph + agglomeration: {report}"
    assert report["n_labels"] == N
    assert report["n_clusters"] == 50
    assert report["nmi"] > 0.9, report


PEAK_CHILD = """
import sys
sys.path.insert(0, "bench")
from clusterbench import peak_rss_bytes
print(peak_rss_bytes())
"""


def test_a_child_reports_its_own_peak_not_its_parents():
    """The parent touches 1 GB first; the child's peak must not include it (``ru_maxrss`` does, at exec)."""
    held = bytearray(1 << 30)  # calloc'd: its pages count in RSS only once written
    held[:: 1 << 12] = b"\x01" * len(range(0, 1 << 30, 1 << 12))  # one byte a 4 KiB page: all of it resident
    del held
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", PEAK_CHILD], capture_output=True, text=True, timeout=60, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    child_peak = int(proc.stdout.strip().splitlines()[-1])
    assert 0 < child_peak < (1 << 30) // 2, f"the child reported a peak RSS of {child_peak / 1e9:.2f} GB"
