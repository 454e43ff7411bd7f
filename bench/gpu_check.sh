#!/usr/bin/env bash
# One GPU, at most 8 minutes (each step has its own timeout: 180 + 75 + 45 + 60 + 60 s = 7 min, plus the
# install): bf16 PPO updates with each memory option and each accelerate config that
# fits one device, beside TRL 1.10's PPOTrainer, at the ~0.5 B Llama size of bench/memory.py.
# Prints one JSON line per case (ok, s/update, peak GPU memory) and writes them to $OUT/gpu_check.jsonl.
#
# Prepared on a machine with PyPI (the GPU machine reaches nothing):
#   make gpu-wheels      # .gpu/whl: datasets + its pure-Python needs, trl 1.10, deepspeed; .gpu/trl_baseline
# then on the GPU machine, from the repository root, carrying .gpu:
#   bash bench/gpu_check.sh
# No test needs a GPU; this script is how the CUDA, bf16, FSDP and DeepSpeed paths get exercised.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -d .gpu/whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
    || { echo '{"case": "install", "ok": false}'; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
TRL_DIR=${TRL_DIR:-.gpu/trl_baseline}
"$PY" - <<'PY' | tee "$OUT/gpu_check.jsonl"
import json, torch, transformers, accelerate
print(json.dumps({"case": "versions", "ok": torch.cuda.is_available(), "device": torch.cuda.get_device_name(0)
                  if torch.cuda.is_available() else None, "torch": torch.__version__,
                  "transformers": transformers.__version__, "accelerate": accelerate.__version__}))
PY
run() {  # run NAME SECONDS ARGS...: one bench/memory.py invocation, killed after SECONDS; its JSON lines tagged with NAME
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
run single 180 --cases full,gc,lora,adapter_gc,trl,trl_peft
run fsdp 75 --cases full,gc --launch examples/accelerate/fsdp.yaml --no-trl
# FSDP through the CLI with the same config (the path tests/test_ppo_sharding.py runs on CPU, here
# on CUDA where accelerate applies FSDP2 itself): the run is sharded, and its checkpoint and final
# policy are ordinary files and save_pretrained folders.
FSDP_DIR=/tmp/gpu_check_fsdp_tiny
rm -rf "$FSDP_DIR" && mkdir -p "$FSDP_DIR"
"$PY" -m rewardlab.cli ppo --make-tiny "$FSDP_DIR/runs/tiny" > "$OUT/fsdp_cli.out" 2> "$OUT/fsdp_cli.err"
(cd "$FSDP_DIR" && timeout 45 "$PY" -m accelerate.commands.launch --config_file "$OLDPWD/examples/accelerate/fsdp.yaml" \
  --num_processes 1 -m rewardlab.cli ppo --config "$OLDPWD/examples/ppo_tiny.yaml" --set run.total_episodes=64 \
  --set run.progress_bar=false) >> "$OUT/fsdp_cli.out" 2>> "$OUT/fsdp_cli.err"
"$PY" - "$?" "$FSDP_DIR/runs/ppo_tiny" <<'PY' | tee -a "$OUT/gpu_check.jsonl"
import glob, json, sys
code, out = int(sys.argv[1]), sys.argv[2]
row = {"case": "fsdp_cli", "ok": False, "exit": code}
try:
    from transformers import AutoModelForCausalLM
    state = json.load(open(sorted(glob.glob(f"{out}/checkpoints/update-*/trainer_state.json"))[-1]))
    AutoModelForCausalLM.from_pretrained(f"{out}/policy")
    row.update(sharded=state.get("sharded"), ok=code == 0 and state.get("sharded") is True)
except Exception as e:  # noqa: BLE001 — report, do not stop the other cases
    row["error"] = repr(e)[:300]
print(json.dumps(row))
PY
run zero2 60 --cases full --launch examples/accelerate/deepspeed_zero2.yaml --no-trl
run zero3 60 --cases full --launch examples/accelerate/deepspeed_zero3.yaml --no-trl
