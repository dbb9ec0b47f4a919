#!/usr/bin/env bash
# GPU generation benchmark: the pipeline against vLLM's own offline ceiling, on one GPU.
#
# Model: a Llama-3-8B-shaped model (hidden 4096, 32 layers, 32 query / 8 KV heads, intermediate 14336, vocab
# 128256, bf16) with random weights. Only config.json and a tokenizer are written locally (a byte-level BPE
# trained on the seed text, its vocabulary padded to 128256 entries so that every sampled id decodes); vLLM
# initialises the weights itself with --load-format dummy, so nothing is downloaded and no 16 GB file is written.
#
# 1. ceiling: `vllm bench throughput` (offline LLM engine, all prompts queued at once, ignore_eos) with random
#    prompts of our prompts' mean token length and exactly GEN_OUTPUT_LEN output tokens each (--random-input-len /
#    --random-output-len: the plain --input-len/--output-len lose to the random dataset's own defaults);
# 2. ours: an OpenAI-compatible vLLM server with the same model and engine settings, and
#    benchmarks/generation_throughput.py --modes raw,ours --response-mode text --ignore-eos against it
#    (same output length per request, GEN_CONCURRENCY in flight).
# Output tokens/s of each; the last line is JSON with ours_over_ceiling (target >= 0.85).
#
# Needs: vllm (the CUDA build) and this project's Python deps (openai, httpx, pydantic, jinja2, rouge-score,
# tokenizers, transformers) importable by $PYTHON. Environment: GEN_REQUESTS (default 1024), GEN_CONCURRENCY
# (default 256), GEN_OUTPUT_LEN (default 512), GEN_WORKDIR (default /tmp/gpu-gen), GEN_PORT (default 8777).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
N=${GEN_REQUESTS:-1024}
C=${GEN_CONCURRENCY:-256}
OUT_LEN=${GEN_OUTPUT_LEN:-512}
WORK=${GEN_WORKDIR:-/tmp/gpu-gen}
PORT=${GEN_PORT:-8777}
MODEL="$WORK/llama3-8b-shape"
MAX_LEN=4096
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
mkdir -p "$WORK"
cd "$ROOT"

say() { printf '[gpu_generation %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if ! "$PY" -c "import vllm" 2>/dev/null; then
  say "vllm is not importable by $PY: this benchmark needs the CUDA build of vLLM (pip install vllm), which this"
  say "machine does not have and cannot download. Nothing was measured."
  echo '{"benchmark": "gpu_generation", "error": "vllm not installed", "ours_over_ceiling": null}'
  exit 3
fi
missing=$("$PY" -c "
import importlib
print(' '.join(m for m in ('openai', 'httpx', 'pydantic', 'jinja2', 'rouge_score', 'tokenizers', 'transformers')
               if importlib.util.find_spec(m) is None))")
if [ -n "$missing" ]; then
  say "missing Python packages: $missing"
  echo "{\"benchmark\": \"gpu_generation\", \"error\": \"missing: $missing\", \"ours_over_ceiling\": null}"
  exit 3
fi
"$PY" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__, torch.cuda.get_device_name())" >&2

say "writing a Llama-3-8B-shaped config and a padded tokenizer to $MODEL"
MEAN_PROMPT=$("$PY" - "$MODEL" <<'EOF'
import json, sys
from pathlib import Path
from transformers import AutoTokenizer, LlamaConfig
from pipeline.tiny import build_tokenizer

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
VOCAB = 128256
build_tokenizer("llama", vocab_size=8000).save_pretrained(out)
data = json.loads((out / "tokenizer.json").read_text())
vocab = data["model"]["vocab"]
i = 0
while len(vocab) < VOCAB:  # unreachable by merges, but every id decodes (byte-level alphabet only)
    token, n = "Ġ", i
    for _ in range(5):
        token += "abcdefghijklmnopqrstuvwxyz"[n % 26]; n //= 26
    if token not in vocab:
        vocab[token] = len(vocab)
    i += 1
(out / "tokenizer.json").write_text(json.dumps(data))
tok = AutoTokenizer.from_pretrained(out)
LlamaConfig(vocab_size=VOCAB, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
            torch_dtype="bfloat16").save_pretrained(out)
# Our prompts' mean length in tokens, so that the ceiling's random prompts are as long.
from pipeline.config import GenerationConfig
from pipeline.generate import GenerationRun
builder = GenerationRun(GenerationConfig(output_dir="/tmp/unused", response_mode="text", tasks_per_request=4)).builder
def prompt_tokens(text):
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    return len(ids if isinstance(ids, list) else ids["input_ids"])  # transformers 5 returns a BatchEncoding
lengths = [prompt_tokens(builder.render(i).text) for i in range(200)]
print(round(sum(lengths) / len(lengths)))
EOF
)
say "mean prompt length: $MEAN_PROMPT tokens; output length: $OUT_LEN; requests: $N; concurrency (ours): $C"

ENGINE_ARGS=(--load-format dummy --dtype bfloat16 --max-model-len "$MAX_LEN" --enable-prefix-caching)
VLLM_CLI=(vllm)
command -v vllm >/dev/null || VLLM_CLI=("$PY" -m vllm.entrypoints.cli.main)

say "ceiling: vllm bench throughput"
"${VLLM_CLI[@]}" bench throughput --model "$MODEL" "${ENGINE_ARGS[@]}" --dataset-name random \
  --random-input-len "$MEAN_PROMPT" --random-output-len "$OUT_LEN" --num-prompts "$N" --output-json "$WORK/ceiling.json" \
  > "$WORK/ceiling.log" 2>&1 || { tail -40 "$WORK/ceiling.log" >&2; exit 1; }
tail -3 "$WORK/ceiling.log" >&2

say "ours: vLLM OpenAI server on port $PORT, then benchmarks/generation_throughput.py"
# Dev mode only for POST /reset_prefix_cache between the benchmark's modes (loopback-only server).
VLLM_SERVER_DEV_MODE=1 "$PY" -m vllm.entrypoints.openai.api_server --model "$MODEL" --served-model-name bench "${ENGINE_ARGS[@]}" \
  --host 127.0.0.1 --port "$PORT" > "$WORK/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null && break
  kill -0 $SERVER 2>/dev/null || { tail -40 "$WORK/server.log" >&2; exit 1; }
  sleep 1
done
"$PY" benchmarks/generation_throughput.py --base-url "http://127.0.0.1:$PORT/v1" --model bench --modes raw,ours \
  --requests "$N" --concurrency "$C" --max-tokens "$OUT_LEN" --response-mode text --ignore-eos --repeats 1 \
  --workdir "$WORK/pipeline" | tee "$WORK/pipeline.log" >&2

"$PY" - "$WORK/ceiling.log" "$WORK/pipeline.log" "$OUT_LEN" <<'EOF'
import json, re, sys
# "Throughput: R requests/s, T total tokens/s, O output tokens/s" (the JSON file only has total tokens/s)
ceiling_tps = float(re.findall(r"([0-9.]+) output tokens/s", open(sys.argv[1]).read())[-1])
ours = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
print(json.dumps({
    "benchmark": "gpu_generation", "model": "llama-3-8b shape, random weights, bf16",
    "requests": ours["requests"], "concurrency": ours["concurrency"], "output_len": int(sys.argv[3]),
    "ceiling_output_tokens_per_s": round(ceiling_tps, 1),
    "raw_tokens_per_s": ours.get("raw_tokens_per_s"), "ours_tokens_per_s": ours["ours_tokens_per_s"],
    "ours_over_ceiling": round(ours["ours_tokens_per_s"] / ceiling_tps, 3),
    "ours_over_raw": ours.get("ours_over_raw"), "prefix_cache_hit_rate": ours.get("prefix_cache_hit_rate"),
}))
EOF
