"""What the recipe key ``deterministic`` costs: the same runs with it on and off, same invocation.

    python bench/determinism_cost.py                 # quickstart + jule_usps (train.epochs=2), 2 rounds
    python bench/determinism_cost.py --rounds 3 --recipes quickstart_digits
    python bench/determinism_cost.py --quick         # quickstart only, 1 epoch, 1 round (CI)

Each run is its own `julekit run` process with the machine's default threads; on and off
alternate, so a change of load on a shared machine hits both alike. Prints seconds per run
(the run's own summary.json "seconds"), the ratio on/off, and the sha256 of assignments.csv of
every run: identical hashes within "on" are the point of the setting.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

CASES = {
    "quickstart_digits": ["--set", "seed=3"],
    "jule_usps": ["--set", "train.epochs=2"],
}


def one_run(recipe: str, extra: list[str], deterministic: bool, out: Path) -> tuple[float, str]:
    cmd = ["julekit", "run", recipe, "--device", "cpu", "--quiet", "--out", str(out), *extra,
           "--set", f"deterministic={str(deterministic).lower()}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = json.loads((out / "summary.json").read_text())["seconds"]
    return seconds, hashlib.sha256((out / "assignments.csv").read_bytes()).hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--rounds", type=int, default=2, help="runs with the setting on")
    ap.add_argument("--off-rounds", type=int, default=None, help="runs with it off (default: --rounds)")
    ap.add_argument("--quick", action="store_true", help="quickstart, 1 epoch, 1 round")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    cases = {"quickstart_digits": CASES["quickstart_digits"] + ["--set", "train.epochs=1"]} if args.quick else \
        {r: CASES[r] for r in args.recipes}
    rounds = 1 if args.quick else args.rounds
    off_rounds = rounds if args.off_rounds is None or args.quick else args.off_rounds
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, cpus {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.1f}")
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for recipe, extra in cases.items():
            times: dict[bool, list[float]] = {True: [], False: []}
            hashes: dict[bool, list[str]] = {True: [], False: []}
            for r in range(rounds):
                for det in (True, False):
                    if not det and r >= off_rounds:
                        continue
                    seconds, digest = one_run(recipe, extra, det, Path(tmp) / f"{recipe}-{det}-{r}")
                    times[det].append(seconds)
                    hashes[det].append(digest)
                    print(f"  {recipe} deterministic={str(det).lower():5} round {r}: {seconds:6.1f} s  {digest}",
                          flush=True)
            ratio = median(times[True]) / median(times[False])
            report[recipe] = {"extra": extra, "seconds_on": times[True], "seconds_off": times[False],
                              "ratio_on_off": ratio, "hashes_on": hashes[True], "hashes_off": hashes[False]}
            print(f"{recipe}: deterministic on {median(times[True]):.1f} s, off {median(times[False]):.1f} s "
                  f"(median of {rounds} / {off_rounds}) -> on/off {ratio:.2f}; distinct results on: {len(set(hashes[True]))}, "
                  f"off: {len(set(hashes[False]))}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
