"""A LoRA adapter trained on SmolLM2, served by vLLM CPU: greedy tokens equal PEFT's, token for token.

One short LoRA job (seed tasks, merge=True) is shared by the module. Then:

* vLLM on the *base* model with ``--enable-lora --lora-modules NAME=ADAPTER_DIR`` must generate, for the adapter
  NAME, exactly the tokens of ``generate(do_sample=False)`` of the ``PeftModel`` that was trained (still in memory,
  so a wrongly saved adapter cannot pass) and of the saved adapter reloaded with ``PeftModel.from_pretrained``, and
  for the base model exactly the base model's tokens (which differ from the adapter's, so the adapter is really
  applied);
* vLLM on the merged directory written by ``merge=True`` must generate the adapter's tokens too.

Everything runs in float32 (vLLM ``--dtype float32``, PEFT on a float32 base upcast from the bf16 checkpoint) so
that the two implementations agree up to summation order. Prompts are sent as token ids to /v1/completions, so
neither tokenisation nor a chat template can differ; EOS is masked for the first N tokens on both sides
(vLLM ``min_tokens``, transformers ``min_new_tokens``) so that N tokens are always compared.
"""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
openai = pytest.importorskip("openai")

from pipeline import PROJECT_ROOT  # noqa: E402
from pipeline.server import ManagedServer  # noqa: E402
from pipeline.train import TrainConfig, train  # noqa: E402
from pipeline.train.reporting import vllm_lora_rank  # noqa: E402
from pipeline.train.templates import load_template  # noqa: E402
from tests.conftest import _require_vllm, real_server_config  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SEEDS = PROJECT_ROOT / "seeds" / "seed_tasks.jsonl"
ADAPTER_NAME = "smollm2-seeds"
#: Tokens compared per prompt.
N_TOKENS = 24
PROMPTS = [
    {"instruction": "Give three tips for staying healthy.", "input": ""},
    {"instruction": "Is the following text message spam or not spam?",
     "input": "Your parcel is waiting. Pay the $2 customs fee at the link below to release it."},
    {"instruction": "Rewrite the sentence in the passive voice.", "input": "The committee approved the new budget."},
]


@pytest.fixture(scope="module")
def trained(smollm2, tmp_path_factory):
    """A LoRA adapter (r=16, all projections) after 8 steps at a high learning rate, and its merged model."""
    _require_vllm()  # no point training when the server cannot be started
    output_dir = tmp_path_factory.mktemp("lora-vllm") / "adapter"
    config = TrainConfig(
        base_model=str(smollm2), dataset=str(SEEDS), output_dir=str(output_dir), method="lora", template="alpaca",
        max_steps=8, learning_rate=2e-3, warmup_ratio=0.0, lr_scheduler_type="constant",
        per_device_train_batch_size=2, gradient_accumulation_steps=1, max_seq_length=256, lora_r=16, lora_alpha=32,
        gradient_checkpointing=False, num_sample_prompts=0, val_size=0, report_every=4, save_steps=1000,
        resume="never", merge=True, precision="fp32", seed=0,
    )
    result = train(config)
    assert result.merged_dir is not None and (result.merged_dir / "config.json").is_file()
    return config, result


@pytest.fixture(scope="module")
def prompt_ids(smollm2):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2))
    template = load_template("alpaca")
    return [tokenizer(template.record_prompt(record))["input_ids"] for record in PROMPTS]


def hf_greedy(model, prompts: list[list[int]]) -> list[list[int]]:
    """``generate(do_sample=False)`` token ids of N_TOKENS new tokens per prompt (EOS masked until then)."""
    model.eval()
    outputs = []
    for ids in prompts:
        with torch.no_grad():
            generated = model.generate(
                input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False, max_new_tokens=N_TOKENS, min_new_tokens=N_TOKENS, use_cache=True,
            )
        outputs.append(generated[0, len(ids):].tolist())
    return outputs


def vllm_greedy(base_url: str, model: str, prompts: list[list[int]]) -> list[list[int]]:
    """Greedy (temperature 0) /v1/completions token ids of N_TOKENS tokens per prompt, prompts given as ids."""
    client = openai.OpenAI(base_url=base_url, api_key="EMPTY", timeout=300, max_retries=0)
    outputs = []
    for ids in prompts:
        response = client.completions.create(
            model=model, prompt=ids, max_tokens=N_TOKENS, temperature=0.0,
            extra_body={"min_tokens": N_TOKENS, "return_token_ids": True},
        )
        choice = response.choices[0].model_dump()
        assert choice["finish_reason"] == "length", choice
        outputs.append(list(choice["token_ids"]))
    return outputs


def _load_fp32(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


@pytest.fixture(scope="module")
def reference(trained, smollm2, prompt_ids):
    """Greedy tokens, in float32, of the trained model still in memory and of the plain base model."""
    _, result = trained
    base_tokens = hf_greedy(_load_fp32(smollm2), prompt_ids)
    adapter_tokens = hf_greedy(result.model, prompt_ids)  # the PeftModel that train() trained (fp32)
    # The adapter must change what the model says, or serving it could be confused with serving the base.
    assert adapter_tokens != base_tokens
    return {"base": base_tokens, "adapter": adapter_tokens}


def test_saved_adapter_reloads_into_peft_with_the_same_greedy_tokens(trained, smollm2, prompt_ids, reference):
    from peft import PeftModel

    _, result = trained
    reloaded = PeftModel.from_pretrained(_load_fp32(smollm2), str(result.output_dir))
    tokens = hf_greedy(reloaded, prompt_ids)
    assert tokens == reference["adapter"], _describe(reference["adapter"], tokens)


def _describe(expected: list[list[int]], got: list[list[int]]) -> str:
    lines = []
    for number, (want, have) in enumerate(zip(expected, got)):
        first = next((i for i, (a, b) in enumerate(zip(want, have)) if a != b), None)
        lines.append(f"prompt {number}: first difference at token {first}\n  expected {want}\n  got      {have}")
    return "\n".join(lines)


def test_vllm_serves_the_adapter_on_the_base_with_pefts_greedy_tokens(trained, smollm2, prompt_ids, reference,
                                                                      tmp_path):
    config, result = trained
    adapter_dir = result.output_dir.resolve()
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["r"] == config.lora_r
    server_config = real_server_config(extra_args=[
        "--enable-lora", "--lora-modules", f"{ADAPTER_NAME}={adapter_dir}",
        "--max-lora-rank", str(vllm_lora_rank(config.lora_r)),
    ])
    server = ManagedServer(server_config, str(smollm2), tmp_path / "vllm-lora.log")
    try:
        base_url = server.start()
        served = vllm_greedy(base_url, ADAPTER_NAME, prompt_ids)
        served_base = vllm_greedy(base_url, str(smollm2), prompt_ids)
    finally:
        server.stop()
    assert served == reference["adapter"], _describe(reference["adapter"], served)
    # The same server without the adapter gives the base model's tokens: the adapter is applied per request.
    assert served_base == reference["base"], _describe(reference["base"], served_base)


def test_vllm_serves_the_merged_model_with_pefts_greedy_tokens(trained, prompt_ids, reference, tmp_path):
    _, result = trained
    merged_dir = result.merged_dir.resolve()
    assert json.loads((merged_dir / "config.json").read_text())["dtype"] == "float32"
    server = ManagedServer(real_server_config(), str(merged_dir), tmp_path / "vllm-merged.log")
    try:
        base_url = server.start()
        served = vllm_greedy(base_url, str(merged_dir), prompt_ids)
    finally:
        server.stop()
    assert served == reference["adapter"], _describe(reference["adapter"], served)
