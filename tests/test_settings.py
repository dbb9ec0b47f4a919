"""Configs from files and command lines: options derived from the config models, one loader, one error format."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import build_parser
from pipeline.config import GenerationConfig
from pipeline.settings import ConfigError, load_config, overrides_from_args


def generate_config(*argv: str, path=None) -> GenerationConfig:
    args = build_parser().parse_args(["generate", *argv])
    return load_config(GenerationConfig, path, overrides_from_args(args, args.options))


def test_every_generation_field_is_an_option_and_reaches_the_config():
    config = generate_config(
        "--model", "m", "--base-url", "http://a/v1", "--base-url", "http://b/v1", "--dedup.threshold", "0.5",
        "--no-export.charts", "--llm.extra-body", '{"ignore_eos": true}', "--filters.blacklist", "chart",
        "--seeds", "my.jsonl", "--concurrency", "3", "--llm.temperature", "0.2", "--target", "7",
    )
    assert config.llm.model == "m" and config.llm.base_urls == ["http://a/v1", "http://b/v1"]
    assert config.dedup.threshold == 0.5 and config.export.charts is False
    assert config.llm.extra_body == {"ignore_eos": True} and config.filters.blacklist == ["chart"]
    assert config.seeds_path == "my.jsonl" and config.llm.max_concurrency == 3
    assert config.llm.temperature == 0.2 and config.target == 7
    # Options not given leave the model's defaults, field by field.
    assert config.llm.top_p == GenerationConfig().llm.top_p and config.export.hf_dataset is True


def test_no_option_carries_a_secret():
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "--llm.api-key", "sk-secret"])


def test_options_override_the_file_and_errors_name_the_source(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("target: 50\nllm: {model: from-file, temperature: 0.3}\n", encoding="utf-8")
    config = generate_config("--target", "9", path=path)
    assert config.target == 9 and config.llm.model == "from-file" and config.llm.temperature == 0.3
    with pytest.raises(ConfigError, match=r"^command line: dedup\.threshold: Input should be greater than 0"):
        generate_config("--dedup.threshold", "0")
    with pytest.raises(ConfigError, match=rf"^{path}: llm\.temperature: "):
        generate_config("--llm.temperature", "9", path=path)


def test_json_config_files_are_read_and_bad_ones_named(tmp_path):
    good = tmp_path / "cfg.json"
    good.write_text(json.dumps({"target": 4, "dedup": {"tokenizer": "ko"}}), encoding="utf-8")
    config = load_config(GenerationConfig, good)
    assert config.target == 4 and config.dedup.tokenizer == "ko"
    bad = tmp_path / "bad.json"
    bad.write_text('{"target": 4,\n oops}', encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{bad}:2: invalid JSON"):
        load_config(GenerationConfig, bad)


def test_train_options_are_named_in_errors():
    import argparse

    pytest.importorskip("pipeline.train.config")
    from pipeline.train.cli import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    with pytest.raises(ConfigError, match=r"^command line: lora_r \(--lora-r\): Input should be greater than or equal to 1"):
        config_from_args(parser.parse_args(["--dataset", "d", "--lora-r", "0"]))
    config = config_from_args(parser.parse_args(["--dataset", "d", "--output", "o", "--no-padding-free"]))
    assert config.output_dir == "o" and config.padding_free is False
