"""Training data: load Alpaca records, tokenise them with response-only labels, and batch them.

Label rules, which the old scripts got wrong:

* labels are ``-100`` exactly over the prompt tokens (unless ``train_on_inputs``), and the EOS token that ends
  the response is always a label, so the fine-tuned model learns to stop;
* padding is masked by *position* (transformers' collators know each example's length), never by comparing
  token ids with ``pad_token_id``: GPT-NeoX / Polyglot-ko tokenizers use one id for pad and EOS, and masking by id
  silently removed every EOS from the loss.

Prompt and response are tokenised separately and concatenated, so the prompt tokens are exactly what an
inference server produces for the prompt alone and the prompt/response boundary is exact.

Batching is transformers' own: ``DataCollatorWithFlattening`` (padding-free) and ``DataCollatorForSeq2Seq``
(padded, as alpaca-lora). ``datasets`` is needed only for ``save_to_disk`` directories.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from pipeline.files import InputFileError, Located, read_json_values
from pipeline.train.templates import PromptTemplate

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
#: Files looked for, in order, inside a self-instruct run directory.
RUN_DIR_FILES = ("alpaca_data.json", "accepted.jsonl")

Record = dict[str, str]


class DatasetError(ValueError):
    """A dataset path or record that cannot be used; the message names the file."""


# --------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------


def load_records(path: str | Path, max_samples: int | None = None) -> list[Record]:
    """Alpaca records ``{instruction, input, output}`` from a run directory, HF dataset directory or file.

    Accepted: a self-instruct run directory holding ``alpaca_data.json`` (else ``accepted.jsonl``), a
    ``datasets.save_to_disk`` directory (its ``train`` split if it is a ``DatasetDict``), a JSON list file or a
    JSON-lines file. Extra keys of each record (generation metadata) are dropped; a missing ``input`` is "".

    A file of Self-Instruct tasks (``seeds/seed_tasks.jsonl``: ``{instruction, instances: [{input, output}]}``,
    recognised by the ``instances`` key of its first record) gives one record per instance.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: dataset not found")
    if path.is_dir():
        source, raw = _load_directory(path)
    else:
        source, raw = path, _load_file(path)
    try:
        if raw and isinstance(raw[0].value, Mapping) and "instances" in raw[0].value:
            records = [record for item in raw for record in _seed_task_records(item)]
        else:
            records = [_clean_record(item) for item in raw]
    except InputFileError as exc:
        raise DatasetError(str(exc)) from None
    if not records:
        raise DatasetError(f"{source}: dataset has no records")
    return records[:max_samples] if max_samples else records


def _load_directory(path: Path) -> tuple[Path, list[Located]]:
    for name in RUN_DIR_FILES:
        if (path / name).is_file():
            return path / name, _load_file(path / name)
    if any((path / marker).is_file() for marker in ("dataset_info.json", "state.json", "dataset_dict.json")):
        return path, [Located(path, 0, index, item, in_array=True) for index, item in enumerate(_load_hf_dataset(path))]
    raise DatasetError(
        f"{path}: directory has neither {' nor '.join(RUN_DIR_FILES)} nor a datasets.save_to_disk layout "
        "(dataset_info.json / dataset_dict.json)"
    )


def _load_hf_dataset(path: Path) -> list[Any]:
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError as exc:  # pragma: no cover - datasets is a core dependency
        raise DatasetError(f"{path}: reading a save_to_disk directory needs the 'datasets' package") from exc
    try:
        loaded = load_from_disk(str(path))
    except Exception as exc:
        raise DatasetError(f"{path}: datasets.load_from_disk failed: {exc}") from exc
    if isinstance(loaded, DatasetDict):
        if "train" not in loaded:
            raise DatasetError(f"{path}: DatasetDict has no 'train' split (splits: {', '.join(loaded)})")
        loaded = loaded["train"]
    return list(loaded)


def _load_file(path: Path) -> list[Located]:
    try:
        items = list(read_json_values(path))
    except InputFileError as exc:
        raise DatasetError(str(exc)) from None
    if path.suffix.lower() == ".json" and items and not items[0].in_array:
        raise DatasetError(f"{path}:1: (root): expected a JSON list of {{instruction, input, output}} records")
    return items


def _clean_record(item: Located) -> Record:
    if not isinstance(item.value, Mapping):
        raise item.error("(root)", f"expected an object with instruction/input/output, got {type(item.value).__name__}")
    instruction = item.value.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise item.error("instruction", "must be a non-empty string")
    return {"instruction": instruction, **_input_and_output(item, item.value, "")}


def _seed_task_records(item: Located) -> list[Record]:
    """The Alpaca records of one Self-Instruct task: its instruction with each instance's input and output.

    Other keys (``id``, ``name``, ``is_classification``) are dropped. Errors name the field, e.g.
    ``seed_tasks.jsonl:7: instances[0].output: must be a string``.
    """
    task = item.value
    if not isinstance(task, Mapping):
        raise item.error("(root)", f"expected a Self-Instruct task object with instruction/instances, got {type(task).__name__}")
    instruction, instances = task.get("instruction"), task.get("instances")
    if not isinstance(instruction, str) or not instruction.strip():
        raise item.error("instruction", "must be a non-empty string")
    if not isinstance(instances, list) or not instances:
        raise item.error("instances", "must be a non-empty list of {input, output} objects (Self-Instruct task format)")
    return [{"instruction": instruction, **_input_and_output(item, instance, f"instances[{number}]")}
            for number, instance in enumerate(instances)]


def _input_and_output(item: Located, fields: Any, prefix: str) -> dict[str, str]:
    """``input`` ("" when missing) and ``output`` of ``fields``, checked; ``prefix`` names where they are."""
    dotted = f"{prefix}." if prefix else ""
    if not isinstance(fields, Mapping):
        raise item.error(prefix, f"must be an object with input/output, got {type(fields).__name__}")
    output, input_text = fields.get("output"), fields.get("input")
    if not isinstance(output, str):
        raise item.error(f"{dotted}output", "must be a string")
    if input_text is None:
        input_text = ""
    if not isinstance(input_text, str):
        raise item.error(f"{dotted}input", "must be a string")
    return {"input": input_text, "output": output}


@dataclass
class DataSplit:
    """Records for training, validation loss and before/after sample generations (disjoint)."""

    train: list[Record]
    validation: list[Record] = field(default_factory=list)
    samples: list[Record] = field(default_factory=list)


def split_records(records: Sequence[Record], num_samples: int, val_size: int, seed: int) -> DataSplit:
    """Shuffle deterministically and hold out ``num_samples`` + ``val_size`` records.

    Raises :class:`DatasetError` if nothing would be left to train on.
    """
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    if num_samples + val_size >= len(records):
        raise DatasetError(
            f"dataset has {len(records)} records but {num_samples} sample prompts + {val_size} validation records "
            "are held out; lower num_sample_prompts / val_size"
        )
    samples = [records[i] for i in order[:num_samples]]
    validation = [records[i] for i in order[num_samples : num_samples + val_size]]
    train = [records[i] for i in order[num_samples + val_size :]]
    return DataSplit(train=train, validation=validation, samples=samples)


# --------------------------------------------------------------------------------------------------------
# Tokenisation
# --------------------------------------------------------------------------------------------------------


def ensure_pad_token(tokenizer: Any) -> None:
    """Give a tokenizer without a pad token one, preferring a token that is not EOS.

    LLaMA tokenizers have no pad token; ``<unk>`` is used as alpaca-lora did (id 0). Padding is masked by
    position anyway, so even the EOS fallback cannot hide EOS labels. Also pads on the right for training.
    """
    if tokenizer.pad_token_id is None:
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"


@dataclass
class TokenizeStats:
    """What tokenisation did to the records."""

    examples: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    prompt_tokens: int = 0
    label_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def tokenize_records(
    tokenizer: Any,
    template: PromptTemplate,
    records: Iterable[Mapping[str, str]],
    max_seq_length: int,
    train_on_inputs: bool = False,
) -> tuple[list[dict[str, list[int]]], TokenizeStats]:
    """Tokenise records into ``{input_ids, labels}`` examples: prompt + response + EOS.

    ``labels`` equals ``input_ids`` except over the prompt tokens, which are ``IGNORE_INDEX`` unless
    ``train_on_inputs``. An example longer than ``max_seq_length`` keeps its prompt and loses the end of its
    response (and so its EOS); one whose prompt leaves no room for a response token is dropped.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; the model could never learn to stop")
    records = list(records)
    prompts = [template.record_prompt(record) for record in records]
    responses = [template.response(record["output"]) for record in records]
    # Batched calls let fast tokenizers work in Rust over the whole list.
    prompt_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"] if prompts else []
    response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"] if responses else []
    eos = tokenizer.eos_token_id
    stats = TokenizeStats()
    examples: list[dict[str, list[int]]] = []
    for prompt, response in zip(prompt_ids, response_ids):
        # Tokenizers that append EOS to every encoding would otherwise end the prompt with an end-of-text.
        if len(prompt) > 1 and prompt[-1] == eos:
            prompt = prompt[:-1]
        target = list(response) + [eos]
        room = max_seq_length - len(prompt)
        if room < 1:
            stats.dropped_too_long += 1
            continue
        if len(target) > room:
            target = target[:room]
            stats.truncated += 1
        input_ids = list(prompt) + target
        prompt_labels = list(prompt) if train_on_inputs else [IGNORE_INDEX] * len(prompt)
        examples.append({"input_ids": input_ids, "labels": prompt_labels + target})
        stats.examples += 1
        stats.prompt_tokens += len(prompt)
        stats.label_tokens += len(target)
    return examples, stats


# --------------------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------------------


class ListDataset:
    """A map-style dataset over pre-tokenised examples (no ``datasets`` dependency)."""

    def __init__(self, examples: Sequence[dict[str, list[int]]]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.examples[index]


def padding_free_collator() -> Any:
    """transformers' ``DataCollatorWithFlattening``: a micro-batch becomes one row, position ids restart per example.

    transformers turns restarting position ids into per-example attention (``sdpa_packed``, flash attention's
    varlen kernels), so examples never attend to each other and no token is padding. The first label of every
    example is ignored so that the last token of one example does not learn to predict the first token of the
    next. Requires ``use_cache=False`` in training: with a cache, transformers skips the packed-sequence
    detection and the examples would attend to each other.
    """
    from transformers import DataCollatorWithFlattening

    return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)


def pad_to_longest_collator(tokenizer: Any, pad_to_multiple_of: int = 8) -> Any:
    """transformers' ``DataCollatorForSeq2Seq`` (alpaca-lora's collator): right-pad to the longest example.

    Padding is marked by position: ``attention_mask`` 0 and labels ``IGNORE_INDEX`` after each example's own
    length, whatever the pad id is, so an EOS equal to the pad token keeps its label.
    """
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, padding=True, pad_to_multiple_of=pad_to_multiple_of,
                                  label_pad_token_id=IGNORE_INDEX, return_tensors="pt")


def count_real_tokens(batch: Mapping[str, Any]) -> int:
    """Non-padding tokens of a collated batch (by attention mask, never by pad id)."""
    if batch.get("attention_mask") is not None:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())
