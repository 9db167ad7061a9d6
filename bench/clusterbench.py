"""Shared machinery of bench/vs_sklearn.py and bench/growth.py: the timed clustering stage, child jobs, RSS.

The clustering stage is the one a recipe runs with no backbone (``recipes/ac_gdl_*.yaml``): the
engine's own ``Experiment.forward`` (K_s-NN graph, initial clusters, merges) repeated until the
clusterer is done, then ``clusterer.finalize``. Plugin calls are timed by thin wrappers around the
recipe's plugin instances, so the code that runs is exactly the library's.

Every measurement runs in a fresh child process (``python bench/clusterbench.py '<job json>'``) so
that its peak RSS (VmHWM) is that of the measurement alone; the child prints one JSON line.
"""
from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO / "recipes" / "ac_gdl_mnist_full.yaml"
RESULT_TAG = "BENCH_RESULT "  # prefix of the child's result line, so stray prints cannot be mistaken for it


# ---------------------------------------------------------------- process figures

def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status in bytes; None where there is no such file (not Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far.

    Linux's VmHWM, not ``ru_maxrss``: a child that Python starts (vfork, then exec) has the parent's
    high-water mark folded into its ``ru_maxrss`` at exec, so under a test runner that once held
    2 GB every child would report at least 2 GB. VmHWM belongs to the child's own memory map."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def rss_now_bytes() -> int:
    now = _status_bytes("VmRSS")
    return peak_rss_bytes() if now is None else now


def mem_available_bytes() -> int:
    """MemAvailable from /proc/meminfo: what a new process may use without pushing others out."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


# ---------------------------------------------------------------- timing wrappers

class Timed:
    """Proxy to a plugin instance that adds the wall time of the named methods to ``times[label]``."""

    def __init__(self, inner: Any, methods: dict[str, str], times: dict[str, float],
                 on_result: Callable[[str, Any], None] | None = None) -> None:
        self._inner, self._methods, self._times, self._on_result = inner, methods, times, on_result

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        label = self._methods.get(name)
        if label is None:
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = attr(*args, **kwargs)
            self._times[label] = self._times.get(label, 0.0) + time.perf_counter() - t0
            if self._on_result is not None:
                self._on_result(label, out)
            return out

        return timed


def sync(device: Any) -> None:
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- the clustering stage

def load_recipe_for(recipe_path: str | Path, device: str, overrides: list[str] | None = None) -> dict:
    from jule_kit.recipe import load_recipe

    return load_recipe(recipe_path, [*(overrides or []), f"device={device}"])


def run_stage(recipe: dict, features: Any, target: int, keep_graph: bool = False) -> dict[str, Any]:
    """Cluster ``features`` (N, D raw features, before the affinity's normalisation) as the recipe does.

    Returns the labels, the wall time of the whole stage and of its parts: ``knn_graph`` (the
    affinity's kNN graph, every build), ``initial_clusters`` (the initializer), ``gdl_table``
    (the linkage's initial affinity table) and ``merging`` (the rest: the greedy merges).
    """
    import torch
    from jule_kit.engine import Experiment
    from jule_kit.rundir import RunDir

    times: dict[str, float] = {}
    graphs: list[Any] = []
    with tempfile.TemporaryDirectory() as tmp:  # the engine wants a run directory; nothing is written to it
        exp = Experiment(recipe, RunDir(Path(tmp)), recipe_name="bench")
        if exp.plugins.backbone is not None:
            raise SystemExit("the clustering-stage bench takes a recipe without a backbone (an ac_gdl_* recipe)")
        device = exp.device
        counts: list[int] = []

        def keep(label: str, out: Any) -> None:
            if keep_graph and label == "knn_graph":
                graphs.append(out)
            elif label == "initial_clusters":
                counts.append(int(np.unique(out).size))

        exp.plugins.affinity = Timed(exp.plugins.affinity, {"build": "knn_graph", "prepare": "prepare"}, times, keep)
        exp.plugins.initializer = Timed(exp.plugins.initializer, {"initial_labels": "initial_clusters"}, times, keep)
        exp.plugins.linkage = Timed(exp.plugins.linkage, {"init": "gdl_table"}, times)
        clusterer = exp.plugins.clusterer
        features = features.to(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t0 = time.perf_counter()
        # the engine's loop (Experiment.run) without training, file output or metrics
        labels, period = None, 0
        while not (labels is not None and clusterer.done(labels, target)) and period < exp.train["max_periods"]:
            labels = exp.forward(features, labels, period, target)
            period += 1
        final_features = exp.plugins.affinity.prepare(features)
        labels = clusterer.finalize(final_features, labels, exp.context(period, target))
        sync(device)
        total = time.perf_counter() - t0
    parts = {k: times.get(k, 0.0) for k in ("prepare", "knn_graph", "initial_clusters", "gdl_table")}
    parts["merging"] = max(0.0, total - sum(parts.values()))
    out: dict[str, Any] = {"labels": np.asarray(labels), "seconds": total, "parts": parts, "periods": period,
                           "device": str(device), "initial_clusters": counts[0] if counts else None}
    if device.type == "cuda":
        out["gpu_peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
        out["gpu_name"] = torch.cuda.get_device_name(device)
    if graphs:
        out["graph"] = graphs[0]
    return out


def mnist_features(recipe: dict, n: int | None, data_dir: str | None = None) -> tuple[Any, np.ndarray]:
    """Raw features of the recipe's dataset (``data.subset`` = n, the recipe's seeded subset), and the labels."""
    import torch
    from jule_kit.engine import Experiment
    from jule_kit.rundir import RunDir

    recipe = dict(recipe, data=dict(recipe["data"], subset=n))
    exp = Experiment(recipe, RunDir(Path(tempfile.gettempdir())), data_dir=data_dir)
    data = exp.load_data()
    return exp.raw_features(torch.as_tensor(data.images)), data.labels


def synthetic_features(n: int, dim: int = 160, blobs: int = 1000, classes: int = 10, seed: int = 0
                       ) -> tuple[Any, np.ndarray]:
    """Gaussian blobs in ``dim`` dimensions, L2-normalised rows as the JULE CNN's embeddings are.

    ``blobs`` blob centres are grouped around ``classes`` class centres, so the labels (the class of
    each sample's blob) are meaningful at the target of ``classes`` clusters.
    """
    import torch

    rng = np.random.default_rng(seed)
    class_centres = rng.normal(size=(classes, dim))
    blob_class = np.arange(blobs) % classes
    blob_centres = class_centres[blob_class] + 0.6 * rng.normal(size=(blobs, dim))
    blob = rng.integers(0, blobs, size=n)
    x = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # in chunks: 1M x 160 float64 noise would be 1.3 GB at once
        b = blob[start:start + 100_000]
        x[start:start + len(b)] = blob_centres[b] + 0.35 * rng.normal(size=(len(b), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return torch.from_numpy(x), blob_class[blob].astype(np.int64)


def noisy_mnist_features(recipe: dict, n: int, data_dir: str | None = None, noise: float = 0.1
                         ) -> tuple[Any, np.ndarray]:
    """All MNIST-full pixels (/255, 784-d) repeated to ``n`` rows, every row plus Gaussian noise of
    std ``noise`` per pixel: real image structure at sizes the dataset does not have."""
    base, labels = mnist_features(recipe, None, data_dir)
    return noisy_copies(base, labels, n, noise)


def run_features(run: str | Path, data_dir: str | None = None) -> tuple[Any, np.ndarray]:
    """The final features of a finished JULE run (its last checkpoint's network on its data, as its final
    stage computes them), before the affinity's normalisation, and the labels."""
    import torch
    from jule_kit.engine import Experiment
    from jule_kit.recipe import load_recipe
    from jule_kit.rundir import RECIPE, RunDir

    run = Path(run)
    state = RunDir(run).load_checkpoint()
    if state is None or "model" not in state:
        raise SystemExit(f"{run}: no checkpoint with a trained network")
    recipe = load_recipe(run / RECIPE, ["device=cpu"])
    with tempfile.TemporaryDirectory() as tmp:
        exp = Experiment(recipe, RunDir(Path(tmp)), data_dir=data_dir)
        with exp.deterministic():
            data = exp.load_data()
            model = exp.build_model(data)
            model.load_state_dict(state["model"])
            features = exp.final_features(model, torch.as_tensor(data.images), state["period"] + 1)
    return features.detach(), data.labels


def noisy_copies(base: Any, labels: np.ndarray, n: int, noise: float, seed: int = 0) -> tuple[Any, np.ndarray]:
    """``base`` rows repeated to ``n`` rows, each plus Gaussian noise of std ``noise`` per dimension."""
    import torch

    rows = np.arange(n) % base.shape[0]
    generator = torch.Generator().manual_seed(seed)
    x = torch.empty(n, base.shape[1])
    for start in range(0, n, 100_000):  # in chunks: the noise for 1M rows at once would double the peak
        stop = min(n, start + 100_000)
        x[start:stop] = base[torch.as_tensor(rows[start:stop])] + noise * torch.randn(
            stop - start, base.shape[1], generator=generator)
    return x, labels[rows]


# ---------------------------------------------------------------- child jobs

def _load_features(job: dict, recipe: dict) -> tuple[Any, np.ndarray]:
    if job["data"] == "synthetic":
        return synthetic_features(job["n"], dim=job.get("dim", 160), blobs=job.get("blobs", 1000))
    if job["data"] == "mnist_noisy":
        return noisy_mnist_features(recipe, job["n"], job.get("data_dir"))
    if job["data"] == "run_noisy":  # a finished JULE run's final features (saved by the parent), with noise
        import torch

        saved = np.load(job["features"])
        base = torch.from_numpy(saved["features"])
        return noisy_copies(torch.nn.functional.normalize(base, dim=1), saved["labels"], job["n"], job.get("noise", 0.01))
    return mnist_features(recipe, job["n"], job.get("data_dir"))


def job_julekit(job: dict) -> dict[str, Any]:
    from jule_kit.metrics import nmi

    recipe = load_recipe_for(job["recipe"], job.get("device", "cpu"), job.get("overrides"))
    features, truth = _load_features(job, recipe)
    baseline = rss_now_bytes()
    target = recipe["clusters"] or int(np.unique(truth).size)
    load_before = load_avg()
    if job.get("profile"):  # cProfile slows the Python-heavy merging: its times are shares, not timings
        import cProfile

        prof = cProfile.Profile()
        res = prof.runcall(run_stage, recipe, features, target, keep_graph=bool(job.get("graph_out")))
    else:
        res = run_stage(recipe, features, target, keep_graph=bool(job.get("graph_out")))
    if job.get("graph_out"):  # hand the very same kNN graph to the sklearn child
        np.save(job["graph_out"], res["graph"].indices)
    labels = res["labels"]
    out = {"n": int(features.shape[0]), "dim": int(features.shape[1]), "seconds": res["seconds"],
           "parts": res["parts"], "periods": res["periods"], "device": res["device"],
           "initial_clusters": res["initial_clusters"],
           "n_clusters": int(labels.max()) + 1, "nmi": nmi(truth, labels),
           "peak_rss_bytes": peak_rss_bytes(), "baseline_rss_bytes": baseline,
           "load_before": load_before, "load_after": load_avg()}
    for key in ("gpu_peak_bytes", "gpu_name"):
        if key in res:
            out[key] = res[key]
    if job.get("profile"):
        out["profile_top"] = profile_top(prof, 15)
    return out


def profile_top(prof: Any, count: int) -> list[dict[str, Any]]:
    """The ``count`` functions with the most own time (tottime) in a cProfile run."""
    import pstats

    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, ncalls, tottime, cumtime, callers)}
    rows = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:count]
    return [{"function": f"{Path(f).name}:{line}({name})", "ncalls": nc, "tottime": tt, "cumtime": ct}
            for (f, line, name), (_, nc, tt, ct, _) in rows]


def symmetric_connectivity(indices: np.ndarray) -> Any:
    """The directed K-NN graph of ``indices`` (N, K) as a symmetric 0/1 scipy CSR matrix."""
    import scipy.sparse as sp

    n, k = indices.shape
    a = sp.csr_matrix((np.ones(n * k), indices.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
    a = ((a + a.T) > 0).astype(np.float64).tocsr()
    return a


def sklearn_peak_estimate(nnz: int, dim: int, itemsize: int = 4) -> int:
    """Bytes scikit-learn's connectivity-constrained linkage adds on top of the data.

    linkage_tree gathers ``X[row]`` and ``X[col]`` for every stored edge and paired_distances
    forms their difference: three (nnz, dim) arrays of X's dtype (float32 here). At N = 10,000
    this predicts 2.83 GB over the 0.70 GB baseline; the peak RSS measured 3.55 GB.
    """
    return 3 * nnz * dim * itemsize


def job_sklearn(job: dict) -> dict[str, Any]:
    import warnings

    from sklearn.cluster import AgglomerativeClustering

    from jule_kit.metrics import nmi

    recipe = load_recipe_for(job["recipe"], "cpu", job.get("overrides"))
    features, truth = _load_features(job, recipe)
    from jule_kit.registry import get_registry

    spec = recipe["affinity"]
    affinity = get_registry().get("affinity", spec["name"]).create({k: v for k, v in spec.items() if k != "name"})
    prepared = affinity.prepare(features)
    x = prepared.numpy()  # the very features julekit builds its graph from
    graph_seconds = None
    if job.get("graph_in"):
        indices = np.load(job["graph_in"])
    else:  # no graph handed over: build it here with the library, timed
        t0 = time.perf_counter()
        indices = affinity.build(prepared).indices
        graph_seconds = time.perf_counter() - t0
    conn = symmetric_connectivity(indices)
    del features, prepared
    baseline = rss_now_bytes()
    target = recipe["clusters"] or int(np.unique(truth).size)
    load_before = load_avg()
    model = AgglomerativeClustering(n_clusters=target, linkage="average", connectivity=conn)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        labels = model.fit(x).labels_
        seconds = time.perf_counter() - t0
    return {"n": int(x.shape[0]), "dim": int(x.shape[1]), "seconds": seconds, "graph_seconds": graph_seconds,
            "connectivity_nnz": int(conn.nnz), "n_clusters": int(labels.max()) + 1, "nmi": nmi(truth, labels),
            "warnings": sorted({str(w.message)[:200] for w in caught}),
            "peak_rss_bytes": peak_rss_bytes(), "baseline_rss_bytes": baseline,
            "load_before": load_before, "load_after": load_avg()}


JOBS: dict[str, Callable[[dict], dict[str, Any]]] = {"julekit": job_julekit, "sklearn": job_sklearn}


def run_child(job: dict, timeout: float | None = None) -> dict[str, Any] | None:
    """Run ``job`` in a fresh Python process; its result, or None when it ran past ``timeout`` seconds."""
    cmd = [sys.executable, str(Path(__file__).resolve()), json.dumps(job)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child job {job['kind']} (n={job.get('n')}) failed with code {proc.returncode}:\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_TAG):])


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x (NaN with fewer than two usable points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2:
        return float("nan")
    lx, ly = np.array(pts).T
    return float(np.polyfit(lx, ly, 1)[0])


def gb(n_bytes: float) -> float:
    return n_bytes / 1e9


def main() -> None:
    job = json.loads(sys.argv[1])
    out = JOBS[job["kind"]](job)
    print(RESULT_TAG + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
