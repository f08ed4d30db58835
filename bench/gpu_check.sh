#!/usr/bin/env bash
# The GPU check of the hot loops, prepared to run once in under 8 minutes on an H100/H200:
#   1. the same-results test (CUDA graphs on vs off, tests/test_graphs.py);
#   2. both worlds at their published sizes (agent batch and every stage batch as configured),
#      eager and replayed from CUDA graphs side by side, with FLOPs, MFU and the projected
#      duration of a full Atari 100k run;
#   3. a summary against the targets (bench/gpu_summary.py);
#   4. a one-GPU torchrun smoke run (NCCL, DDP: docs/distributed.md), last, in 60 s at most,
#      where less than 400 s have gone.
# Everything goes to $OUT (default bench/gpu_check_out): logs, one JSON per world, summary.txt.
#
#   bench/gpu_check.sh                      # on the GPU machine, dependencies installed
#   DEVICE=cpu PRESET=smoke bench/gpu_check.sh   # a CPU dry run of the plumbing (minutes)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/gpu_check_out}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-atari100k}
STEPS=${STEPS:-5}
mkdir -p "$OUT"
start=$(date +%s)
{
  echo "gpu_check $(date -u +%FT%TZ) device=$DEVICE preset=$PRESET"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  # What this machine lacks of pyproject's dependencies (and pytest, for the same-results step),
  # named first: a machine without a package index needs their wheels installed beside the rest.
  $PY - <<'PYEOF'
import importlib.metadata as md, re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"] + ["pytest"]
names = [re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0] for d in deps]
missing = []
for name in names:
    try:
        md.distribution(name)
    except md.PackageNotFoundError:
        missing.append(name)
print("dependencies not installed:", " ".join(missing) or "none")
PYEOF
} 2>&1 | tee "$OUT/env.txt"

if [ "$DEVICE" = cuda ]; then
  echo "== same results: graphs on vs off (CUDA)"
  if $PY -c "import pytest" 2>/dev/null; then
    timeout 150 $PY -m pytest -q -p no:cacheprovider -p no:logging tests/test_graphs.py \
      -k "cuda" 2>&1 | tail -20 | tee "$OUT/same_results.txt"
  else
    echo "NOT RUN: pytest is not installed here" | tee "$OUT/same_results.txt"
  fi
fi

for world in diffusion iris; do
  echo "== $world: eager vs graphs at the published sizes"
  timeout 200 $PY bench/world_speed.py --world "$world" --preset "$PRESET" --device "$DEVICE" \
    --batch-size 0 --stage-batch-size 0 --graphs both --steps "$STEPS" \
    --out "$OUT/$world.json" > "$OUT/$world.txt" 2> "$OUT/$world.err"
  echo "exit $? after $(( $(date +%s) - start )) s"; tail -3 "$OUT/$world.err"
done

$PY bench/gpu_summary.py "$OUT"/diffusion.json "$OUT"/iris.json | tee "$OUT/summary.txt"
if [ -f "$OUT/same_results.txt" ]; then
  echo "same results, graphs on vs off (CUDA tests): $(tail -1 "$OUT/same_results.txt")" \
    | tee -a "$OUT/summary.txt"
fi

echo "== torchrun, one rank ($DEVICE: NCCL on cuda, gloo on cpu)"
if [ $(( $(date +%s) - start )) -lt 400 ]; then  # only where it still fits the 8 minutes
  rm -rf "$OUT/runs/torchrun-smoke"  # this script's own scratch run of an earlier call
  timeout 60 $PY -m torch.distributed.run --standalone --nproc-per-node 1 train.py --env Breakout \
    --world diffusion --agent actor_critic --preset test --device "$DEVICE" --name torchrun-smoke \
    --set run.runs_dir="$OUT/runs" > "$OUT/torchrun.txt" 2>&1
  echo "exit $? (results.json: $(test -f "$OUT/runs/torchrun-smoke/results.json" && echo yes || echo no))" \
    | tee -a "$OUT/torchrun.txt"
else
  echo "skipped: $(( $(date +%s) - start )) s gone, the smoke run would pass 8 minutes" | tee "$OUT/torchrun.txt"
fi
echo "gpu_check done in $(( $(date +%s) - start )) s"
