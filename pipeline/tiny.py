"""Build a tiny, randomly initialised causal LM with its own tokenizer, for tests and the demo.

Nothing can be downloaded from a model hub on CI machines, so the test model is made locally: a byte-level
BPE trained on the project's seed text plus a random ``LlamaForCausalLM`` or ``GPTNeoXForCausalLM``. The
shapes are chosen for vLLM's CPU attention kernels, which reject ``head_dim=16`` but accept 64.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Literal

from pipeline.resources import seeds_dir

Arch = Literal["llama", "gpt-neox"]

#: A minimal chat template so that vLLM's chat-completions endpoint works with the tiny model.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '### ' + message['role'] + ':\n' + message['content'] + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '### assistant:\n' }}{% endif %}"
)

_FALLBACK_TEXT = [
    "Write a short story about a robot who learns to paint.",
    "Classify the sentiment of the following review as positive or negative.",
    "Explain why the sky is blue in simple terms.",
    "다음 문장을 영어로 번역하세요.",
    "주어진 글의 주제를 한 문장으로 요약하세요.",
]


def _seed_corpus() -> Iterator[str]:
    """Instruction, input and output text of every seed file in ``seeds/``, or a small fallback."""
    found = False
    for path in sorted(seeds_dir().glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                task = json.loads(line)
            except json.JSONDecodeError:
                continue
            found = True
            yield task.get("instruction", "")
            for instance in task.get("instances", []):
                yield instance.get("input", "")
                yield instance.get("output", "")
    if not found:
        yield from _FALLBACK_TEXT


def build_tokenizer(arch: Arch, vocab_size: int = 512):
    """Train a byte-level BPE on the seed text and wrap it like the real tokenizer of ``arch``.

    LLaMA tokenizers have ``<s>``/``</s>`` and no pad token; GPT-NeoX (Polyglot-ko) uses ``<|endoftext|>``
    for bos, eos and pad alike. Mimicking that lets tests catch the pad==eos masking bug of old scripts.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if arch == "llama":
        specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    else:
        specials = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                    "pad_token": "<|endoftext|>"}
    special_list = list(dict.fromkeys(specials.values()))
    bpe = Tokenizer(models.BPE(unk_token=specials["unk_token"]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_list,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_seed_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, **specials)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_model(output_dir: str | Path, arch: Arch = "llama", seed: int = 0) -> Path:
    """Write a tiny random model plus tokenizer to ``output_dir`` and return the path.

    The model has 2 layers, hidden size 128 and 2 heads (head_dim 64) and is under 2 MB.
    """
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(arch)
    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        config = LlamaConfig(intermediate_size=256, num_key_value_heads=2, pad_token_id=None, **common)
        model = LlamaForCausalLM(config)
    elif arch == "gpt-neox":
        config = GPTNeoXConfig(intermediate_size=512, pad_token_id=tokenizer.pad_token_id, rotary_pct=0.5, **common)
        model = GPTNeoXForCausalLM(config)
    else:
        raise ValueError(f"unknown arch {arch!r}: expected 'llama' or 'gpt-neox'")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
