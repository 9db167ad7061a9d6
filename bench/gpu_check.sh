#!/usr/bin/env bash
# The GPU check: one call of at most 8 minutes on a machine with a GPU, torch and no faiss.
#
#   bench/gpu_check.sh --prepare                 # here: copy the datasets it needs into .device_data/
#   JULEKIT_DATA=.device_data bench/gpu_check.sh  # there (carry .device_data): writes into $OUT
#   bench/gpu_check.sh --device cpu --cap 20 --set data.subset=600 --set train.epochs=1   # a tiny CPU rehearsal
#
# It installs this checkout without dependencies into the machine's own Python, then runs
#   1. the quickstart (recipes/quickstart_digits.yaml);
#   2. two USPS JULE runs with the same seed, side by side, and compares their assignments.csv;
#   3. the MNIST-full and COIL-100 JULE recipes side by side, each capped at --cap seconds
#      (a capped run keeps the periods it finished: metrics.jsonl and checkpoint.pt);
# and writes OUT/summary.md, OUT/summary.json (wall time, periods, NMI per run, whether the pair
# matched) and OUT/gpu_check.tar.gz (every run's recipe, metrics, summary, assignments and log).
# The device returns at most 8 files; this writes 3.
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=auto
CAP=270
INSTALL=1
OUT_DIR="${OUT:-runs/gpu_check}"
SETS=()
DATASETS=(usps mnist_full coil100)
usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --cap) CAP="$2"; shift 2 ;;
    --set) SETS+=(--set "$2"); shift 2 ;;
    --out) OUT_DIR="$2"; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --prepare)
      mkdir -p .device_data
      python3 - "${DATASETS[@]}" <<'EOF' || exit 2
import shutil, subprocess, sys
from jule_kit.data import resolve
for name in sys.argv[1:]:
    path = resolve(name)
    shutil.copy2(path, f".device_data/{path.name}")
    print(f"{name}: {path} -> .device_data/{path.name}")
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
open(".device_data/COMMIT", "w").write(commit + "\n")
print(f"commit {commit}; run there with carry [.device_data] and: JULEKIT_DATA=.device_data bash bench/gpu_check.sh")
EOF
      exit 0 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (expected --device, --cap, --set, --out, --no-install, --prepare)" >&2
       exit 2 ;;
  esac
done
case "$CAP" in ''|*[!0-9]*) echo "gpu_check.sh: --cap $CAP: expected whole seconds" >&2; exit 2 ;; esac

WORK="$OUT_DIR/work"
if [ -e "$WORK" ]; then  # never write over an earlier check
  echo "gpu_check.sh: $WORK already exists; pass another --out or move it away" >&2
  exit 2
fi
mkdir -p "$WORK"
LOG="$WORK/gpu_check.log"
export PYTHONUNBUFFERED=1
say() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }

if [ "$INSTALL" = 1 ]; then
  say "pip install --no-deps -e ."
  python3 -m pip install --quiet --no-deps --no-build-isolation -e . >>"$LOG" 2>&1 || { say "install failed"; exit 1; }
fi
python3 - >>"$LOG" 2>&1 <<'EOF'
import torch, jule_kit.backends as b
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "", "knn backends", b.available_backends())
EOF
command -v nvidia-smi >/dev/null && nvidia-smi >>"$LOG" 2>&1

# run NAME CAP ARGS...: one julekit run into $WORK/NAME, timed; its exit status and seconds in NAME/.status
run() {
  local name="$1" cap="$2"; shift 2
  local start end rc
  start=$(date +%s.%N)
  timeout --signal=INT --kill-after=20 "$cap" julekit run "$@" --device "$DEVICE" --out "$WORK/$name" "${SETS[@]}" \
    >"$WORK/$name.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  mkdir -p "$WORK/$name"
  echo "$rc $(python3 -c "print(round($end - $start, 1))") $cap" >"$WORK/$name/.status"
  say "$name: exit $rc after $(cat "$WORK/$name/.status" | cut -d' ' -f2) s (cap $cap s)"
}

say "quickstart"
run quickstart 120 recipes/quickstart_digits.yaml
say "USPS twice with seed 0, side by side"
run usps_a 150 recipes/jule_usps.yaml &
run usps_b 150 recipes/jule_usps.yaml &
wait
say "MNIST-full and COIL-100 side by side, each capped at $CAP s"
run jule_mnist_full "$CAP" recipes/jule_mnist_full.yaml &
run jule_coil100 "$CAP" recipes/jule_coil100.yaml &
wait

python3 bench/gpu_check_summary.py "$WORK" "$OUT_DIR" --commit "$(cat .device_data/COMMIT 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  2>&1 | tee -a "$LOG"
tar -czf "$OUT_DIR/gpu_check.tar.gz" -C "$WORK" --exclude=checkpoint.pt --exclude=tb --exclude=montage.png . \
  && say "wrote $OUT_DIR/summary.md, summary.json, gpu_check.tar.gz"
