"""Prompt templates, label masking and batching of the fine-tuning data (no model needed)."""

from __future__ import annotations

import json
import os
import re

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

torch = pytest.importorskip("torch")

from pipeline.tiny import build_tokenizer  # noqa: E402
from pipeline.train.data import (  # noqa: E402
    IGNORE_INDEX,
    DatasetError,
    ensure_pad_token,
    load_records,
    pad_to_longest_collator,
    padding_free_collator,
    split_records,
    tokenize_records,
)
from pipeline.train.templates import load_template  # noqa: E402

WITH_INPUT = {"instruction": "Translate to English.", "input": "안녕하세요", "output": "Hello."}
NO_INPUT = {"instruction": "Name a primary colour.", "input": "", "output": "Blue is a primary colour."}


@pytest.fixture(scope="module", params=["llama", "gpt-neox"])
def tokenizer(request):
    tok = build_tokenizer(request.param)
    ensure_pad_token(tok)
    return tok


def test_alpaca_template_is_stanford_alpaca_text():
    template = load_template("alpaca")
    assert template.prompt("Do X.", "some input") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nDo X.\n\n### Input:\nsome input\n\n### Response:\n"
    )
    assert template.prompt("Do X.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nDo X.\n\n### Response:\n"
    )
    assert template.split_response(template.prompt("Do X.") + "Done.") == "Done."


def test_koalpaca_template_has_context_only_with_input():
    template = load_template("koalpaca")
    assert template.prompt("질문입니다", "맥락입니다") == "### 질문: 질문입니다\n\n### 맥락: 맥락입니다\n\n### 답변:"
    assert template.prompt("질문입니다", "  ") == "### 질문: 질문입니다\n\n### 답변:"
    assert "맥락" not in template.prompt("질문입니다")
    assert template.response("답") == " 답"
    assert template.split_response(template.prompt("q") + " 답입니다") == "답입니다"


def test_template_text_with_braces_is_not_reformatted():
    assert "{x}" in load_template("alpaca").prompt("Fill in {x}.", "{y}")


def test_unknown_template_is_rejected():
    with pytest.raises(ValueError, match="unknown template"):
        load_template("vicuna")


@pytest.mark.parametrize("template_name", ["alpaca", "koalpaca"])
@pytest.mark.parametrize("record", [WITH_INPUT, NO_INPUT], ids=["with-input", "no-input"])
def test_labels_mask_exactly_the_prompt_and_keep_eos(tokenizer, template_name, record):
    template = load_template(template_name)
    [example], stats = tokenize_records(tokenizer, template, [record], max_seq_length=2048)
    prompt_ids = tokenizer(template.record_prompt(record))["input_ids"]
    response_ids = tokenizer(template.response(record["output"]), add_special_tokens=False)["input_ids"]
    n_prompt = len(prompt_ids)

    assert example["input_ids"] == prompt_ids + response_ids + [tokenizer.eos_token_id]
    assert example["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert example["labels"][n_prompt:] == response_ids + [tokenizer.eos_token_id]
    assert IGNORE_INDEX not in example["labels"][n_prompt:]
    assert tokenizer.decode(example["input_ids"][:n_prompt]) == template.record_prompt(record)
    assert stats.label_tokens == len(response_ids) + 1 and stats.prompt_tokens == n_prompt


def test_train_on_inputs_labels_every_token(tokenizer):
    [example], _ = tokenize_records(tokenizer, load_template("alpaca"), [WITH_INPUT], 2048, train_on_inputs=True)
    assert example["labels"] == example["input_ids"]
    assert example["labels"][-1] == tokenizer.eos_token_id


def test_long_response_is_truncated_without_eos_and_long_prompt_dropped(tokenizer):
    template = load_template("koalpaca")
    long_record = {"instruction": "q", "input": "", "output": "word " * 400}
    prompt_len = len(tokenizer(template.record_prompt(long_record))["input_ids"])
    examples, stats = tokenize_records(tokenizer, template, [long_record], max_seq_length=prompt_len + 5)
    assert len(examples[0]["input_ids"]) == prompt_len + 5
    assert tokenizer.eos_token_id not in examples[0]["input_ids"][prompt_len:]  # the answer did not end
    assert stats.truncated == 1

    examples, stats = tokenize_records(tokenizer, template, [long_record], max_seq_length=prompt_len)
    assert examples == [] and stats.dropped_too_long == 1


def test_llama_tokenizer_gets_a_pad_that_is_not_eos():
    tok = build_tokenizer("llama")
    assert tok.pad_token_id is None
    ensure_pad_token(tok)
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id


@pytest.mark.parametrize("template_name", ["alpaca", "koalpaca"])
def test_pad_to_longest_masks_padding_by_position_even_when_pad_is_eos(tokenizer, template_name):
    examples, _ = tokenize_records(tokenizer, load_template(template_name), [WITH_INPUT, NO_INPUT], 2048)
    batch = pad_to_longest_collator(tokenizer)(examples)
    assert batch["input_ids"].shape[1] % 8 == 0
    for row, example in enumerate(examples):
        length = len(example["input_ids"])
        assert batch["labels"][row, :length].tolist() == example["labels"]
        assert batch["labels"][row, length - 1] == tokenizer.eos_token_id  # EOS learned even if pad == eos
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (batch["input_ids"].shape[1] - length)


def test_padding_free_batch_has_no_padding_and_restarting_positions(tokenizer):
    examples, _ = tokenize_records(tokenizer, load_template("koalpaca"), [WITH_INPUT, NO_INPUT, WITH_INPUT], 2048)
    batch = padding_free_collator()(examples)
    lengths = [len(example["input_ids"]) for example in examples]
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert "attention_mask" not in batch
    assert batch["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    offset = 0
    for example, length in zip(examples, lengths):
        labels = batch["labels"][0, offset : offset + length].tolist()
        # The first token of each example is never a target of the previous example's last token.
        assert labels[0] == IGNORE_INDEX and labels[1:] == example["labels"][1:]
        assert labels[-1] == tokenizer.eos_token_id
        offset += length


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------


def test_run_directory_prefers_alpaca_data_json(tmp_path):
    (tmp_path / "alpaca_data.json").write_text(json.dumps([NO_INPUT]), encoding="utf-8")
    (tmp_path / "accepted.jsonl").write_text(json.dumps(WITH_INPUT) + "\n", encoding="utf-8")
    assert load_records(tmp_path) == [NO_INPUT]


def test_run_directory_falls_back_to_accepted_jsonl_and_drops_metadata(tmp_path):
    lines = [{**WITH_INPUT, "id": 1, "rouge_max": 0.3, "source": "machine"},
             {"instruction": "Count to three.", "output": "1, 2, 3", "input": None}]
    (tmp_path / "accepted.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    assert load_records(tmp_path) == [WITH_INPUT, {"instruction": "Count to three.", "input": "", "output": "1, 2, 3"}]


def test_hf_dataset_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"train": datasets.Dataset.from_list([WITH_INPUT, NO_INPUT])}).save_to_disk(tmp_path / "hf")
    assert load_records(tmp_path / "hf") == [WITH_INPUT, NO_INPUT]
    datasets.Dataset.from_list([NO_INPUT]).save_to_disk(tmp_path / "flat")
    assert load_records(tmp_path / "flat", max_samples=1) == [NO_INPUT]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", ":1: json: invalid JSON"),
        (json.dumps({"instruction": "x"}), ":1: \\(root\\): expected a JSON list"),
        (json.dumps([{"instruction": "", "output": "y"}]), "\\[0\\].instruction: must be a non-empty string"),
        (json.dumps([NO_INPUT, {"instruction": "x"}]), "\\[1\\].output: must be a string"),
        (json.dumps([]), "no records"),
    ],
)
def test_bad_dataset_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "alpaca_data.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=message) as info:
        load_records(path)
    assert str(path) in str(info.value)


def test_bad_jsonl_line_and_missing_paths_are_named(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(NO_INPUT) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=rf"{path}:2: json: invalid JSON"):
        load_records(path)
    with pytest.raises(DatasetError, match="neither alpaca_data.json nor accepted.jsonl"):
        load_records(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        load_records(tmp_path / "missing.json")


def test_self_instruct_seed_tasks_give_one_record_per_instance(tmp_path):
    from pipeline import PROJECT_ROOT

    seeds = PROJECT_ROOT / "seeds" / "seed_tasks.jsonl"
    records = load_records(seeds)
    tasks = [json.loads(line) for line in seeds.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(records) == sum(len(task["instances"]) for task in tasks)
    first = tasks[0]
    assert records[0] == {"instruction": first["instruction"], "input": first["instances"][0]["input"],
                          "output": first["instances"][0]["output"]}

    path = tmp_path / "tasks.jsonl"
    task = {"id": "t1", "name": "x", "instruction": "Add the numbers.", "is_classification": False,
            "instances": [{"input": "1 2", "output": "3"}, {"output": "0"}, {"input": None, "output": "0"}]}
    path.write_text(json.dumps(task) + "\n\n" + json.dumps({**task, "id": "t2"}) + "\n", encoding="utf-8")
    assert load_records(path) == 2 * [{"instruction": "Add the numbers.", "input": "1 2", "output": "3"},
                                      {"instruction": "Add the numbers.", "input": "", "output": "0"},
                                      {"instruction": "Add the numbers.", "input": "", "output": "0"}]
    assert len(load_records(path, max_samples=4)) == 4
    listed = tmp_path / "tasks.json"
    listed.write_text(json.dumps([task]), encoding="utf-8")
    assert len(load_records(listed)) == 3


SEED_TASK = {"id": "t", "instruction": "Say hi.", "instances": [{"input": "", "output": "hi"}]}


@pytest.mark.parametrize(
    "bad, message",
    [
        ({**SEED_TASK, "instances": []}, "instances: must be a non-empty list"),
        ({**SEED_TASK, "instances": None}, "instances: must be a non-empty list"),
        ({k: v for k, v in SEED_TASK.items() if k != "instances"}, "instances: must be a non-empty list"),
        ({**SEED_TASK, "instruction": " "}, "instruction: must be a non-empty string"),
        ({**SEED_TASK, "instances": [{"input": "x", "output": "y"}, {"input": "x"}]},
         r"instances\[1\]\.output: must be a string"),
        ({**SEED_TASK, "instances": [{"input": 3, "output": "y"}]}, r"instances\[0\]\.input: must be a string"),
        ({**SEED_TASK, "instances": ["y"]}, r"instances\[0\]: must be an object"),
        (["not", "a", "task"], "\\(root\\): expected a Self-Instruct task object"),
    ],
)
def test_bad_seed_task_errors_name_file_line_and_field(tmp_path, bad, message):
    path = tmp_path / "seed_tasks.jsonl"
    # Line 2 is blank, so the bad task (record 1) is on line 3.
    path.write_text(json.dumps(SEED_TASK) + "\n\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=rf"^{re.escape(str(path))}:3: {message}"):
        load_records(path)


def test_split_holds_out_disjoint_samples_and_validation():
    records = [{"instruction": f"task {i}", "input": "", "output": str(i)} for i in range(10)]
    split = split_records(records, num_samples=2, val_size=3, seed=0)
    assert (len(split.samples), len(split.validation), len(split.train)) == (2, 3, 5)
    ids = [r["output"] for r in split.samples + split.validation + split.train]
    assert sorted(ids) == sorted(r["output"] for r in records)
    assert split_records(records, 2, 3, seed=0) == split
    with pytest.raises(DatasetError, match="held out"):
        split_records(records, num_samples=5, val_size=5, seed=0)


# ---------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------


def test_config_defaults_resolve_base_model_and_output_dir_from_template_and_dataset(tmp_path):
    from pipeline.train.config import TrainConfig

    config = TrainConfig(dataset=str(tmp_path), template="koalpaca", method="qlora").resolved()
    assert config.base_model == "EleutherAI/polyglot-ko-5.8b"
    assert config.output_dir == str(tmp_path / "train-qlora-koalpaca")
    assert config.resolved_learning_rate == 2e-4
    assert TrainConfig(dataset="x", method="lora").resolved_learning_rate == 3e-4
    explicit = TrainConfig(dataset="x", base_model="m", output_dir="o")
    assert explicit.resolved() is explicit


def test_config_is_a_documented_json_form(tmp_path):
    from pydantic import ValidationError

    from pipeline.train.config import TrainConfig

    schema = TrainConfig.model_json_schema()
    assert schema["required"] == ["dataset"]
    undocumented = [name for name, field in TrainConfig.model_fields.items() if not field.description]
    assert undocumented == []
    config = TrainConfig(dataset="d", target_modules=" q_proj, v_proj ")
    assert config.target_modules == ["q_proj", "v_proj"]
    assert TrainConfig.model_validate_json(json.dumps(config.to_json_dict())) == config
    with pytest.raises(ValidationError, match="lora_rank"):
        TrainConfig(dataset="d", lora_rank=8)  # typos are errors, not silently ignored
    with pytest.raises(ValidationError, match="target_modules"):
        TrainConfig(dataset="d", target_modules=",")
