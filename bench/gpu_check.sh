#!/usr/bin/env bash
# One GPU, one prepared run of at most 8 minutes (BUDGET_S=480, install included): each case has its own
# time limit, cut to what is left of the budget; a case with under 15 s left is reported skipped.
#
#   rm_*   reward-model training at ~0.5 B (a random-weight Qwen2-architecture base built here) in bf16:
#          train-rm with LoRA and with gradient checkpointing, TRL's RewardTrainer beside each with the
#          same settings (bench/train_rm.py --case), then `rewardlab score --device cuda` on the LoRA
#          run's merged folder. ~2 min in all (estimate); the limits add up to 5 min 40 s.
#   precision  each PPO model's dtype and autocast under bf16, fp16 and LoRA + merge_adapter + save_dtype
#          (bench/ppo_precision.py), checked against model_precisions(); ~40 s (estimate).
#   ppo_*  bf16 PPO updates with each memory option and each accelerate config that fits one device,
#          beside TRL 1.10's PPOTrainer, at the ~0.5 B Llama size of bench/memory.py; limits 7 min.
#
# Prints one JSON line per case ({"case", "ok", "s_per_step" or "s_per_update", "peak_gpu_mem_gib" or
# "peak_gpu_mib", …}) and writes them to $OUT/gpu_check.jsonl; each case's output is in $OUT/NAME.out/.err.
#
# Prepared on a machine with PyPI (the GPU machine reaches nothing):
#   make gpu-wheels      # .gpu/whl: datasets + its pure-Python needs, trl 1.10, deepspeed; .gpu/trl_baseline
# then on the GPU machine, from the repository root, carrying .gpu:
#   bash bench/gpu_check.sh                      # every case, in the order of CASES below
#   bash bench/gpu_check.sh --cases rm           # only the rm_* cases (a name, or a prefix before "_")
#   PYTHON=.venv/bin/python bash bench/gpu_check.sh --dry-run   # CPU smoke run: tiny rm_* cases, ppo_* skipped
# No test needs a GPU; this script is how the CUDA, bf16, LoRA, FSDP and DeepSpeed paths get exercised.
#
# To add a case: write a function case_NAME taking its time limit in seconds, which appends its JSON
# line(s) with `emit`, and add "NAME LIMIT" to CASES.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
ONLY=""
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --cases) ONLY=${2:-}; shift ;;
    --cases=*) ONLY=${1#*=} ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (use --dry-run, --cases LIST, --help)" >&2; exit 2 ;;
  esac
  shift
done
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
: > "$OUT/gpu_check.jsonl"
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-480}
START=$SECONDS
if [ -d .gpu/whl ] && [ "$DRY_RUN" = 0 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
    || { echo '{"case": "install", "ok": false}'; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
TRL_DIR=${TRL_DIR:-.gpu/trl_baseline}

emit() {  # emit JSON...: append lines to the results and show them
  printf '%s\n' "$@" | tee -a "$OUT/gpu_check.jsonl"
}

# ---- versions ---------------------------------------------------------------------------------
case_versions() {
  timeout "$1" "$PY" - <<'PY' | tee -a "$OUT/gpu_check.jsonl"
import json, torch, transformers, accelerate
print(json.dumps({"case": "versions", "ok": torch.cuda.is_available(), "device": torch.cuda.get_device_name(0)
                  if torch.cuda.is_available() else None, "torch": torch.__version__,
                  "transformers": transformers.__version__, "accelerate": accelerate.__version__}))
PY
}

# ---- reward-model training and scoring (bench/train_rm.py --case) -------------------------------
RM_DIR=${RM_DIR:-/tmp/gpu_check_rm}
if [ "$DRY_RUN" = 1 ]; then
  RM_ARGS=(--size tiny --length 16 --steps 2 --device cpu)
else
  RM_ARGS=(--size 0.5B --length 256 --steps 8 --device cuda)
fi

train_rm() {  # train_rm CASE SECONDS: one bench/train_rm.py case in its own process; its JSON line, or a failure
  local name=$1 limit=$2
  timeout "$limit" "$PY" bench/train_rm.py --case "$name" --dir "$RM_DIR" "${RM_ARGS[@]}" \
    > "$OUT/$name.out" 2> "$OUT/$name.err"
  local code=$?
  local line
  line=$(grep '^{"case"' "$OUT/$name.out" | tail -n 1)
  if [ -n "$line" ]; then
    emit "$line"
  else
    emit "{\"case\": \"$name\", \"ok\": false, \"exit\": $code, \"timed_out\": $([ "$code" = 124 ] && echo true || echo false)}"
  fi
}

case_rm_fixture() { rm -rf "$RM_DIR"; train_rm rm_fixture "$1"; }
case_rm_lora() { train_rm rm_lora "$1"; }
case_rm_lora_trl() { train_rm rm_lora_trl "$1"; }
case_rm_gc() { train_rm rm_gc "$1"; }
case_rm_gc_trl() { train_rm rm_gc_trl "$1"; }
case_rm_score() { train_rm rm_score "$1"; }

# ---- PPO memory options and accelerate configs (bench/memory.py) ----------------------------------
ppo_memory() {  # ppo_memory NAME SECONDS ARGS...: one bench/memory.py invocation; its JSON lines tagged with NAME
  local name=$1 limit=$2; shift 2
  timeout "$limit" "$PY" bench/memory.py --sizes 0.5B --lengths 128 --updates 2 --threads 0 --trl-python "$PY" \
    --trl-dir "$TRL_DIR" --dtype bfloat16 --mixed-precision bf16 "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"
  local code=$?
  "$PY" - "$name" "$code" "$OUT/$name.out" <<'PY' | tee -a "$OUT/gpu_check.jsonl"
import json, sys
name, code, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = [json.loads(l) for l in open(path) if l.startswith("{")]
cases = [r for r in rows if r.get("bench") == "memory"]
for r in cases:
    print(json.dumps({"case": f"{name}:{r['case']}", "ok": True, "s_per_update": r["update_s"],
                      "peak_gpu_mib": r.get("cuda_peak_mib"), "peak_rss_mib": r["peak_rss_mib"]}))
if code or not cases:
    print(json.dumps({"case": name, "ok": False, "exit": code}))
PY
}

case_ppo_single() { ppo_memory ppo_single "$1" --cases full,gc,lora,adapter_gc,trl,trl_peft; }
case_ppo_fsdp() { ppo_memory ppo_fsdp "$1" --cases full,gc --launch examples/accelerate/fsdp.yaml --no-trl; }
case_ppo_zero2() { ppo_memory ppo_zero2 "$1" --cases full --launch examples/accelerate/deepspeed_zero2.yaml --no-trl; }
case_ppo_zero3() { ppo_memory ppo_zero3 "$1" --cases full --launch examples/accelerate/deepspeed_zero3.yaml --no-trl; }

# FSDP through the CLI with the same config (the path tests/test_ppo_sharding.py runs on CPU, here on
# CUDA where accelerate applies FSDP2 itself): the run is sharded, and its checkpoint and final policy
# are ordinary files and save_pretrained folders.
case_ppo_fsdp_cli() {
  local limit=$1 dir=/tmp/gpu_check_fsdp_tiny
  rm -rf "$dir" && mkdir -p "$dir"
  "$PY" -m rewardlab.cli ppo --make-tiny "$dir/runs/tiny" > "$OUT/ppo_fsdp_cli.out" 2> "$OUT/ppo_fsdp_cli.err"
  (cd "$dir" && timeout "$limit" "$PY" -m accelerate.commands.launch --config_file "$OLDPWD/examples/accelerate/fsdp.yaml" \
    --num_processes 1 -m rewardlab.cli ppo --config "$OLDPWD/examples/ppo_tiny.yaml" --set run.total_episodes=64 \
    --set run.progress_bar=false) >> "$OUT/ppo_fsdp_cli.out" 2>> "$OUT/ppo_fsdp_cli.err"
  "$PY" - "$?" "$dir/runs/ppo_tiny" <<'PY' | tee -a "$OUT/gpu_check.jsonl"
import glob, json, sys
code, out = int(sys.argv[1]), sys.argv[2]
row = {"case": "ppo_fsdp_cli", "ok": False, "exit": code}
try:
    from transformers import AutoModelForCausalLM
    state = json.load(open(sorted(glob.glob(f"{out}/checkpoints/update-*/trainer_state.json"))[-1]))
    AutoModelForCausalLM.from_pretrained(f"{out}/policy")
    row.update(sharded=state.get("sharded"), ok=code == 0 and state.get("sharded") is True)
except Exception as e:  # noqa: BLE001 — report, do not stop the other cases
    row["error"] = repr(e)[:300]
print(json.dumps(row))
PY
}

# ---- PPO precision per model (bench/ppo_precision.py) -----------------------------------------------
# bf16 default (frozen reference and reward model in bf16), fp16 with loss scaling, LoRA with a merged bf16
# policy: each model's held dtype against model_precisions(), autocast, s/update, peak GPU memory.
case_precision() {
  local dev=cuda
  [ "$DRY_RUN" = 1 ] && dev=cpu
  timeout "$1" "$PY" bench/ppo_precision.py --device "$dev" --dir /tmp/gpu_check_precision \
    > "$OUT/ppo_precision.out" 2> "$OUT/ppo_precision.err"
  local code=$?
  if grep -q '^{"case"' "$OUT/ppo_precision.out"; then
    emit "$(grep '^{"case"' "$OUT/ppo_precision.out")"
  else
    emit "{\"case\": \"precision\", \"ok\": false, \"exit\": $code}"
  fi
}

# ---- the run ------------------------------------------------------------------------------------
# "NAME LIMIT_S", in order. The rm_* cases come first: they are bounded (~2 min) and the PPO cases
# take what is left. CPU_OK: the cases --dry-run runs (tiny, on the CPU); the others need a GPU.
CASES=(
  "versions 30"
  "rm_fixture 60" "rm_lora 60" "rm_lora_trl 60" "rm_gc 60" "rm_gc_trl 60" "rm_score 40" "precision 60"
  "ppo_single 180" "ppo_fsdp 75" "ppo_fsdp_cli 45" "ppo_zero2 60" "ppo_zero3 60"
)
CPU_OK=" versions rm_fixture rm_lora rm_lora_trl rm_gc rm_gc_trl rm_score precision "

selected() {  # selected NAME: versions always; otherwise every case, or those --cases names (or prefixes)
  local name=$1 want
  [ "$name" = versions ] || [ -z "$ONLY" ] && return 0
  for want in ${ONLY//,/ }; do
    [ "$name" = "$want" ] || [ "${name#"$want"_}" != "$name" ] && return 0
  done
  return 1
}

for entry in "${CASES[@]}"; do
  read -r name limit <<< "$entry"
  selected "$name" || continue
  if [ "$DRY_RUN" = 1 ] && [[ $CPU_OK != *" $name "* ]]; then
    emit "{\"case\": \"$name\", \"ok\": null, \"skipped\": \"dry-run (needs a GPU)\"}"
    continue
  fi
  left=$((BUDGET_S - (SECONDS - START)))
  if [ "$left" -lt 15 ]; then
    emit "{\"case\": \"$name\", \"ok\": null, \"skipped\": \"budget ($BUDGET_S s) spent\"}"
    continue
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  "case_$name" "$limit"
done
