#!/usr/bin/env bash
# GPU training benchmark: LoRA and QLoRA on a randomly initialised LLaMA-2-7B-shaped model (hidden 4096,
# 32 layers, 32 heads, intermediate 11008, vocab 32000), ours (padding-free) against the alpaca-lora-style
# baseline (pad to longest), reporting real tokens/s and peak GPU memory. No hub download: the random model
# is initialised on the GPU in bf16, written to local disk once, and loaded from there by every run (QLoRA
# quantises it to NF4 at load, exactly as for a real checkpoint).
#
# Needs: python3 with torch (CUDA), transformers 5.x, peft, accelerate; bitsandbytes and pydantic may come
# from wheels installed with `pip install --target DIR` and PYTHONPATH=DIR set by the caller.
#
# Environment: GPU_TRAIN_SHAPE=llama2-7b|small|tiny (tiny/small also run on a CPU, to test this script),
# GPU_TRAIN_STEPS (default 16), GPU_TRAIN_BATCH (default 8), GPU_TRAIN_WORKDIR (default /tmp/gpu-train),
# GPU_TRAIN_OUT (directory for logs and the JSON; default the workdir). The last line printed is JSON.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
SHAPE=${GPU_TRAIN_SHAPE:-llama2-7b}
STEPS=${GPU_TRAIN_STEPS:-16}
BATCH=${GPU_TRAIN_BATCH:-8}
WARMUP=${GPU_TRAIN_WARMUP:-4}
WORK=${GPU_TRAIN_WORKDIR:-/tmp/gpu-train}
OUTDIR=${GPU_TRAIN_OUT:-$WORK}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
mkdir -p "$WORK" "$OUTDIR"
cd "$ROOT"

say() { printf '[gpu_train %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

say "environment"
"$PY" - <<'EOF' >&2
import importlib, shutil, torch
for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "pydantic"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:  # report every missing piece at once
        print(name, "MISSING", exc)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
print("disk free GiB", shutil.disk_usage("/tmp").free // 2**30)
EOF

say "packed attention self-check (per-example logits = padding-free logits) and 4-bit load"
"$PY" - <<'EOF' >&2 || say "self-check failed (continuing)"
import json, tempfile, torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig
from pipeline.train.packed_attention import register_packed_attention

device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.bfloat16 if device == "cuda" else torch.float32
config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, use_cache=False)
torch.manual_seed(0)
with torch.device(device):
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=register_packed_attention())
lengths = [7, 33, 2, 120]
pieces = [torch.randint(0, 512, (1, n), device=device) for n in lengths]
with torch.no_grad():
    separate = torch.cat([model(input_ids=p).logits for p in pieces], 1)
    positions = torch.cat([torch.arange(n, device=device) for n in lengths])[None]
    packed = model(input_ids=torch.cat(pieces, 1), position_ids=positions).logits
error = (packed - separate).abs().max().item()
print(json.dumps({"packed_attention_max_abs_error": error}))
assert error < (5e-2 if dtype == torch.bfloat16 else 1e-4), error
if device == "cuda":
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        q = AutoModelForCausalLM.from_pretrained(tmp, device_map={"": 0}, quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16))
        print("4-bit modules:", sum(type(m).__name__ == "Linear4bit" for m in q.modules()))
EOF

MODEL="$WORK/model-$SHAPE"
if [ ! -f "$MODEL/config.json" ]; then
  say "initialising random $SHAPE model in $MODEL"
  "$PY" - "$MODEL" "$SHAPE" <<'EOF'
import sys, torch
from pathlib import Path
sys.path.insert(0, "benchmarks")
import train_throughput as bench
bench.make_model(Path(sys.argv[1]), sys.argv[2], "cuda" if torch.cuda.is_available() else "cpu")
EOF
fi

for METHOD in lora qlora; do
  say "$METHOD: ours vs baseline, $STEPS steps of $BATCH examples"
  if "$PY" benchmarks/train_throughput.py --shape "$SHAPE" --model-dir "$MODEL" --method "$METHOD" \
      --steps "$STEPS" --warmup "$WARMUP" --batch-size "$BATCH" --workdir "$WORK/$METHOD" \
      2>"$OUTDIR/$METHOD.log" | tail -n 1 >"$OUTDIR/$METHOD.json.tmp" && [ -s "$OUTDIR/$METHOD.json.tmp" ]; then
    mv "$OUTDIR/$METHOD.json.tmp" "$OUTDIR/$METHOD.json"
  else
    rm -f "$OUTDIR/$METHOD.json.tmp"
    say "$METHOD failed:"; tail -n 30 "$OUTDIR/$METHOD.log" >&2
    echo '{"error": "failed, see log"}' >"$OUTDIR/$METHOD.json"
  fi
  grep -E '\] (ours|baseline)' "$OUTDIR/$METHOD.log" >&2 || true
  rm -rf "$WORK/$METHOD"  # checkpoints of the 7B runs are not needed
done

"$PY" - "$OUTDIR" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
result = {name: json.loads((out / f"{name}.json").read_text()) for name in ("lora", "qlora")}
lora, qlora = result["lora"], result["qlora"]
result["targets"] = {
    "lora_ratio_ge_2": (lora.get("ratio") or 0) >= 2.0,
    "qlora_ratio_ge_2": (qlora.get("ratio") or 0) >= 2.0,
    "qlora_peak_memory_le_10_gib": (qlora.get("ours_peak_gpu_memory_gib") or 99) <= 10.0,
}
(out / "gpu_train.json").write_text(json.dumps(result, indent=2))
print(json.dumps(result))
EOF
