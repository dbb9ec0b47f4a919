"""Greedy answers to held-out instructions, generated before and after training to compare by eye."""

from __future__ import annotations

from typing import Any, Sequence

from pipeline.train.data import Record
from pipeline.train.templates import PromptTemplate


def generate_samples(
    model: Any, tokenizer: Any, template: PromptTemplate, records: Sequence[Record], max_new_tokens: int
) -> list[str]:
    """Greedy answers of ``model`` to each record's prompt, one prompt at a time (no padding involved)."""
    import torch

    if not records:
        return []
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    answers = []
    try:
        for record in records:
            encoded = tokenizer(template.record_prompt(record), return_tensors="pt").to(device)
            with torch.no_grad():
                generated = model.generate(
                    **encoded,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new_tokens = generated[0, encoded["input_ids"].shape[1]:]
            answers.append(tokenizer.decode(new_tokens, skip_special_tokens=True).strip())
    finally:
        model.train(was_training)
    return answers


def compare_samples(records: Sequence[Record], before: Sequence[str], after: Sequence[str]) -> list[dict[str, str]]:
    """One row per held-out record: its instruction, input and reference output beside both answers."""
    return [
        {"instruction": record["instruction"], "input": record["input"], "reference": record["output"],
         "before": answer_before, "after": answer_after}
        for record, answer_before, answer_after in zip(records, before, after)
    ]
