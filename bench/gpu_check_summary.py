"""The summary of bench/gpu_check.sh: one table of its runs and whether the same-seed pair matched.

    python bench/gpu_check_summary.py WORK OUT [--commit C]

reads every run directory under WORK (its ``.status``: exit code, wall seconds, cap; its
metrics.jsonl and summary.json) and writes OUT/summary.md and OUT/summary.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jule_kit.metrics import nmi  # noqa: E402
from jule_kit.rundir import RunDir  # noqa: E402

PAIR = ("usps_a", "usps_b")


def read_rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_record(run: Path) -> dict:
    """What one run did: finished, capped (with the periods it kept) or failed."""
    rc, wall, cap = (run / ".status").read_text().split()
    rows = read_rows(run)
    periods = [r for r in rows if r.get("period") != "final"]
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else None
    record = {"run": run.name, "exit": int(rc), "wall_seconds": float(wall), "cap_seconds": int(cap),
              "periods_done": len(periods), "seconds_per_period": [round(r["seconds"], 1) for r in periods]}
    if summary is not None:
        record.update(status="finished", nmi=summary.get("nmi"), acc=summary.get("acc"),
                      clusters=summary.get("n_clusters"), run_seconds=summary.get("seconds"),
                      device=summary.get("device"), sf_nmi=periods[-1].get("nmi") if periods else None)
    else:
        timed_out = float(wall) >= int(cap) - 1
        record["status"] = f"capped at {cap} s" if timed_out else f"failed (exit {rc})"
        if periods:
            record.update(last_period=periods[-1]["period"], clusters=periods[-1]["clusters"],
                          nmi=periods[-1].get("nmi"))
    return record


def pair_match(work: Path) -> dict:
    """Whether the two same-seed runs wrote the same assignments (byte for byte), and their NMI."""
    files = [work / name / "assignments.csv" for name in PAIR]
    if not all(f.exists() for f in files):
        return {"compared": False, "why": "a run of the pair did not finish"}
    a, b = (RunDir(work / name).read_assignments() for name in PAIR)
    return {"compared": True, "identical": files[0].read_bytes() == files[1].read_bytes(),
            "nmi_between": round(nmi(a, b), 6)}


def fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--commit", default="unknown")
    args = parser.parse_args(argv)
    runs = sorted(p for p in args.work.iterdir() if (p / ".status").exists())
    records = [run_record(p) for p in runs]
    pair = pair_match(args.work)
    device = next((r["device"] for r in records if r.get("device")), "unknown")
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": args.commit,
              "device": device, "runs": records, "same_seed_pair": pair}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# GPU check, {result['date']}, commit {args.commit}, {device}", "",
             "| run | status | wall s | periods done | s per period | clusters | NMI | SF NMI |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['run']} | {r['status']} | {r['wall_seconds']:.1f} | {r['periods_done']} | "
                     f"{' / '.join(str(s) for s in r['seconds_per_period']) or '-'} | {fmt(r.get('clusters'))} | "
                     f"{fmt(r.get('nmi'))} | {fmt(r.get('sf_nmi'))} |")
    if pair["compared"]:
        lines += ["", f"Same-seed USPS pair: assignments.csv {'identical' if pair['identical'] else 'DIFFERENT'} "
                  f"(NMI between the two: {pair['nmi_between']})"]
    else:
        lines += ["", f"Same-seed USPS pair: not compared ({pair['why']})"]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
