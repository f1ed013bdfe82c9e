#!/usr/bin/env bash
# GPU readiness in at most 8 minutes, for a lent GPU machine: the `gpu` tests, then one table of what a
# full training iteration costs there.
#
#   bash bench/gpu_check.sh             # on the GPU machine, from the repository root
#   bash bench/gpu_check.sh --dry-run   # on any machine, CPU: tiny shapes, 1-2 steps, the same code paths
#
# Stages, each under its own `timeout` (and the time left of the 8 minutes), so one hang does not eat the rest:
#   1. python -m pytest -m gpu tests/test_gpu.py   (dry run: the whole file; the gpu tests skip, the CPU ones run)
#   2. ffhq512, batch 4 per GPU, through the single-process worker loop (bench/train_step.py --loop, on a
#      local shard folder it writes): images/s, peak GPU memory, MFU; fp32, then bf16
#   3. G's forward pass at batch 1 (bench/train_step.py --g-forward)
#   4. the shard reader's images/s at 512 px, PyTorch backend, one decode thread per core (bench/data.py,
#      local shards it writes; no S3)
#   5. torch.profiler of one ffhq512 iteration (bench/train_step.py --profile), into the log only
#   6. host syncs per ordinary training step, ADA on (bench/train_step.py --syncs: CUDA's sync debug mode
#      warns at each; ADA's adjustment alone should be left, once every augment.interval steps)
#   7. per phase (Gmain, Greg, Dmain, Dreg, the rest of the step) of an iteration with every phase due: time,
#      peak memory, host syncs and MFU (bench/train_step.py --phases), eager fp32, eager bf16, compiled bf16
#   8. stage 2 again with --compile, when bench/train_step.py has that flag
# Nothing here needs Ray, DALI or DeepSpeed; their absence is noted, and the DALI reader is benched when present.
# Results: gpu_check.log (everything printed), gpu_check.jsonl (one JSON record per measurement or
# stage) and gpu_check.txt (the table), in $OUT when set, else in a temporary folder named at the end.

set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

RESULTS=${OUT:-$(mktemp -d)}
mkdir -p "$RESULTS"
LOG=$RESULTS/gpu_check.log JSONL=$RESULTS/gpu_check.jsonl TABLE=$RESULTS/gpu_check.txt
: >"$LOG"; : >"$JSONL"
DEADLINE=$((SECONDS + 8 * 60 - 20))  # 20 s kept for the table

if [ $DRY_RUN = 1 ]; then
  PRESET=tiny CORES=2 RESOLUTION=64
  # Tiny shapes and intervals: 2 steps, every phase due within them.
  SHAPE=(--set run.batch_size=2 --set loss.r1_interval=2 --set loss.density_reg_interval=2)
  LOOP_STEPS=(--steps 2 --warmup 0) PROFILE_WARMUP=0 DATA_COUNT=16 SYNC_STEPS=(--steps 2 --warmup 1)
  PHASE_STEPS=(--steps 1 --warmup 1)
  PYTEST=("$PYTHON" -m pytest tests/test_gpu.py -q -rs -p no:cacheprovider)
else
  PRESET=ffhq512 CORES=$(nproc) RESOLUTION=512
  SHAPE=(--set run.batch_size=4)
  LOOP_STEPS=(--steps 16 --warmup 1) PROFILE_WARMUP=2 DATA_COUNT=64 SYNC_STEPS=(--steps 16 --warmup 2)
  PHASE_STEPS=(--steps 3 --warmup 2)
  PYTEST=("$PYTHON" -m pytest -m gpu tests/test_gpu.py -q -rs -p no:cacheprovider)
fi

log() { echo "$*" | tee -a "$LOG"; }
record() { "$PYTHON" -c 'import json, sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' "$@" >>"$JSONL"; }
note() { log "note: $*"; record note "$*"; }

# stage NAME LIMIT_SECONDS COMMAND...: run it under timeout (LIMIT or the time left, the smaller).
stage() {
  local name=$1 limit=$2 left=$((DEADLINE - SECONDS)); shift 2
  if [ $left -lt 15 ]; then note "$name: skipped, the 8 minutes are spent"; return; fi
  [ $limit -gt $left ] && limit=$left
  log "== $name (timeout ${limit} s): $*"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ $rc = 124 ] || [ $rc = 137 ] && note "$name: timed out after ${limit} s"
  log "== $name: exit $rc, $((SECONDS - start)) s"
  record stage "$name" rc "$rc" seconds "$((SECONDS - start))"
}

log "gpu_check: $([ $DRY_RUN = 1 ] && echo 'DRY RUN (CPU, tiny shapes, 1-2 steps; no figure here is a GPU measurement)' || echo 'GPU run'), preset $PRESET, $(date -u +%FT%TZ)"
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "| cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0))' 2>&1 | tee -a "$LOG"
if [ $DRY_RUN = 0 ] && ! "$PYTHON" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  note "no CUDA device: the gpu tests skip and the figures are CPU ones (use --dry-run for a quick CPU check)"
fi
BACKENDS=(pytorch)
for module in ray deepspeed nvidia.dali; do
  if "$PYTHON" -c "import $module" 2>/dev/null; then
    [ $module = nvidia.dali ] && BACKENDS+=(dali)
  else
    case $module in
      ray) note "Ray not installed: the Ray launch (cluster.launch) is not checked here" ;;
      deepspeed) note "DeepSpeed not installed: the deepspeed backend is not checked here" ;;
      nvidia.dali) note "DALI not installed: the dali reader backend is skipped" ;;
    esac
  fi
done

TRAIN=("$PYTHON" bench/train_step.py --presets "$PRESET" "${SHAPE[@]}" --g-forward none --json "$JSONL")
stage "pytest gpu" 150 "${PYTEST[@]}"
stage "loop fp32" 150 "${TRAIN[@]}" --loop "${LOOP_STEPS[@]}" --dtype fp32
stage "loop bf16" 150 "${TRAIN[@]}" --loop "${LOOP_STEPS[@]}" --dtype bf16
stage "G forward" 60 "$PYTHON" bench/train_step.py --presets --g-forward "$PRESET" --json "$JSONL"
stage "reader" 120 "$PYTHON" bench/data.py --resolutions "$RESOLUTION" --count "$DATA_COUNT" --images $((4 * DATA_COUNT)) \
  --threads "$CORES" --backends "${BACKENDS[@]}" --no-s3 --no-consumer --json "$JSONL"
stage "profile" 90 "${TRAIN[@]}" --profile --warmup "$PROFILE_WARMUP"
stage "syncs" 90 "${TRAIN[@]}" --syncs "${SYNC_STEPS[@]}" --set augment.kind=ada --set augment.p=0.2
stage "phases fp32" 60 "${TRAIN[@]}" --phases "${PHASE_STEPS[@]}" --dtype fp32
stage "phases bf16" 60 "${TRAIN[@]}" --phases "${PHASE_STEPS[@]}" --dtype bf16
if [ "$DRY_RUN" = 0 ]; then
  stage "phases bf16 compiled" 150 "${TRAIN[@]}" --phases "${PHASE_STEPS[@]}" --dtype bf16 --compile
fi
if [ "$DRY_RUN" = 1 ]; then
  note "compile: skipped in a dry run (a cold torch.compile takes minutes on 2 CPU cores; tests/test_compile.py checks run.compile on the CPU)"
elif "$PYTHON" bench/train_step.py --help 2>/dev/null | grep -q -- '--compile'; then
  stage "loop fp32 compile" 180 "${TRAIN[@]}" --loop "${LOOP_STEPS[@]}" --dtype fp32 --compile
  stage "loop bf16 compile" 180 "${TRAIN[@]}" --loop "${LOOP_STEPS[@]}" --dtype bf16 --compile
else
  note "compile: skipped, bench/train_step.py has no --compile flag"
fi

"$PYTHON" - "$JSONL" "$DRY_RUN" <<'EOF' | tee "$TABLE" | tee -a "$LOG"
import json, sys

records = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(f"\ngpu_check results{' (DRY RUN: CPU, tiny shapes; not GPU figures)' if sys.argv[2] == '1' else ''}")
print(f"{'measurement':<34} {'img/s':>9} {'peak MiB':>9} {'MFU':>7} {'seconds':>8}  note")
for r in records:
    if "stage" in r:
        if r["rc"] != "0":
            print(f"{'stage ' + r['stage']:<34} {'':>9} {'':>9} {'':>7} {r['seconds']:>8}  FAILED (exit {r['rc']})")
        elif r["stage"].startswith("pytest"):
            print(f"{'stage ' + r['stage']:<34} {'':>9} {'':>9} {'':>7} {r['seconds']:>8}  passed")
    elif r.get("how") == "worker loop":
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        name = f"{r['preset']} loop {r['dtype']} batch {r['batch']}"
        print(f"{name:<34} {r['images_per_second']:>9.2f} {r['peak_memory_mib']:>9.0f} {mfu:>7} "
              f"{r['seconds_per_iteration']:>8.3f}  s/iter; {r['training_gflops_per_image']:.0f} GFLOP/img, "
              f"peak {r['peak_tflops'] or 'n/a'} TFLOP/s, {r['device']}")
    elif r.get("how") == "syncs":
        name = f"{r['preset']} host syncs/step {r['dtype']}"
        found = "n/a" if r["syncs_per_step"] is None else f"{r['syncs_per_step']:.2f}"
        print(f"{name:<34} {'':>9} {'':>9} {'':>7} {'':>8}  {found} per ordinary step over {r['steps']} steps "
              f"(ADA {r['augment']}, its adjustments alone {r['expected_per_step']:.2f}), {r['device']}")
    elif r.get("how") == "phase":
        name = f"{r['preset']} {r['dtype']}{' compiled' if r['compile'] else ''} {r['phase']}"
        peak = "" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}"
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        syncs = "n/a" if r["syncs"] is None else f"{r['syncs']:.1f}"
        print(f"{name:<34} {'':>9} {peak:>9} {mfu:>7} {r['ms'] / 1000:>8.3f}  s/run, host syncs {syncs}, "
              f"{r['gflops']:.0f} GFLOP at batch {r['batch']}, every phase due")
    elif r.get("how") == "G forward, batch 1":
        name = f"{r['preset']} G forward batch 1 {r['dtype']}"
        print(f"{name:<34} {'':>9} {'':>9} {'':>7} {r['seconds']:>8.3f}  neural rendering {r['neural_rendering_resolution']}")
    elif "reader" in r:
        name = f"{r['reader']} {r['res']} px x{r['threads']}"
        print(f"{name:<34} {r['ips']:>9.1f} {'':>9} {'':>7} {'':>8}  {r['source']}, {r['cores']} cores, {r['made']}")
for r in records:
    if "note" in r:
        print(f"note: {r['note']}")
EOF
log "results: $RESULTS ($(basename "$LOG"), $(basename "$JSONL"), $(basename "$TABLE"))"
