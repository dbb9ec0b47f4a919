"""Prompt rendering is deterministic in (seed, index); templates and the structured-output schema."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from pipeline import PROJECT_ROOT
from pipeline.settings import ConfigError
from pipeline.prompts import (
    GeneratedTasks,
    PromptBuilder,
    TemplateError,
    derive_seed,
    resolve_template,
    response_schema,
)
from pipeline.seeds import load_seeds

HANGUL = re.compile(r"[\uac00-\ud7a3]")


@pytest.fixture(scope="module")
def seeds_en():
    return load_seeds(PROJECT_ROOT / "seeds" / "seed_tasks.jsonl")


@pytest.fixture(scope="module")
def seeds_ko():
    return load_seeds(PROJECT_ROOT / "seeds" / "seed_tasks_ko.jsonl")


def builder(seeds, language="en", run_seed=42, k=3, n=7, mode="structured"):
    return PromptBuilder(resolve_template(None, language), seeds, run_seed, k, n, mode)


def test_render_is_deterministic(seeds_en):
    a, b = builder(seeds_en), builder(seeds_en)
    for i in (0, 1, 17, 12345):
        assert a.render(i) == b.render(i) == a.render(i)


def test_render_is_deterministic_across_processes(seeds_en):
    # Independent of Python's per-process hash salt.
    code = (
        "from pipeline.prompts import PromptBuilder, resolve_template; from pipeline.seeds import load_seeds; "
        "from pipeline import PROJECT_ROOT; "
        "s = load_seeds(PROJECT_ROOT / 'seeds' / 'seed_tasks.jsonl'); "
        "p = PromptBuilder(resolve_template(None, 'en'), s, 42, 3, 7, 'structured').render(5); "
        "print(p.sampling_seed, ','.join(p.seed_ids))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT,
                         env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 0, out.stderr
    mine = builder(seeds_en).render(5)
    assert out.stdout.split() == [str(mine.sampling_seed), ",".join(mine.seed_ids)]


def test_render_differs_across_indices_and_seeds(seeds_en):
    a = builder(seeds_en, run_seed=1)
    texts = [a.render(i).text for i in range(10)]
    assert len(set(texts)) == 10
    assert len({a.render(i).sampling_seed for i in range(10)}) == 10
    b = builder(seeds_en, run_seed=2)
    assert [b.render(i).seed_ids for i in range(5)] != [a.render(i).seed_ids for i in range(5)]
    assert a.render(0).sampling_seed != b.render(0).sampling_seed


def test_render_contains_k_examples_and_task_count(seeds_en):
    by_id = {s.id: s for s in seeds_en}
    for k in (1, 3, 5):
        prompt = builder(seeds_en, k=k, n=13).render(3)
        assert prompt.index == 3
        assert len(prompt.seed_ids) == len(set(prompt.seed_ids)) == k
        for sid in prompt.seed_ids:
            assert by_id[sid].instruction.strip() in prompt.text
            assert by_id[sid].instances[0].output.strip() in prompt.text
        assert len(re.findall(r"^\d+\. Instruction: ", prompt.text, flags=re.M)) == k
        assert "13 new" in prompt.text
        assert prompt.text.endswith("\n") and not prompt.text.endswith("\n\n")


def test_text_and_structured_modes_differ(seeds_en):
    structured = builder(seeds_en, mode="structured").render(0).text
    text = builder(seeds_en, mode="text").render(0).text
    assert '{"tasks"' in structured and "###" in text
    assert '{"tasks"' not in text
    assert "<noinput>" in text


def test_english_template_requires_english(seeds_en):
    text = builder(seeds_en).render(0).text
    assert "in English" in text
    assert not HANGUL.search(text.split("Examples of")[0])


def test_korean_template_is_korean_and_does_not_demand_english(seeds_ko):
    prompt = builder(seeds_ko, language="ko", n=9).render(0)
    instructions = prompt.text.split("원하는 과제의 예시")[0]
    hangul = len(HANGUL.findall(instructions))
    letters = len(re.findall(r"[A-Za-z]", instructions))
    assert hangul > 5 * letters  # Korean prose (only the field names are English)
    assert "English" not in prompt.text and "ASCII" not in prompt.text
    assert "한국어" in prompt.text
    assert "9개" in prompt.text
    assert len(prompt.seed_ids) == 3


def test_too_few_seeds_is_a_config_error(seeds_en):
    with pytest.raises(ConfigError, match="num_seed_examples"):
        builder(seeds_en[:2], k=3)


def test_derive_seed_is_stable_and_purpose_specific():
    assert derive_seed(42, 0, "examples") == derive_seed(42, 0, "examples")
    assert derive_seed(42, 0, "examples") != derive_seed(42, 0, "sampling")
    assert 0 <= derive_seed(2**40, 10**9, "x") < 2**31


# ---- schema ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 10])
def test_response_schema(n):
    pattern = "^[A-Z][a-z ]+$"
    schema = response_schema(n, pattern)
    tasks = schema["properties"]["tasks"]
    assert tasks["minItems"] == tasks["maxItems"] == n
    assert "default" not in tasks
    assert schema["required"] == ["tasks"]
    task = schema["$defs"]["GeneratedTask"]
    assert sorted(task["required"]) == ["input", "instruction", "output"]
    assert task.get("additionalProperties") is False
    assert {name: field["pattern"] for name, field in task["properties"].items()} == {
        "instruction": pattern, "input": pattern, "output": pattern,
    }


def test_response_schema_without_pattern_and_no_shared_state():
    with_pattern = response_schema(3, "x")
    plain = response_schema(3)
    assert all("pattern" not in f for f in plain["$defs"]["GeneratedTask"]["properties"].values())
    assert with_pattern["$defs"]["GeneratedTask"]["properties"]["input"]["pattern"] == "x"
    assert "pattern" not in GeneratedTasks.model_json_schema()["$defs"]["GeneratedTask"]["properties"]["input"]


# ---- templates --------------------------------------------------------------------------------------------------
def test_resolve_default_templates():
    assert resolve_template(None, "en").name == "generate_en.jinja"
    assert resolve_template(None, "ko").name == "generate_ko.jinja"
    assert resolve_template("generate_ko", "en").name == "generate_ko.jinja"  # a name without suffix


def test_resolve_template_path(tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text("{{ num_tasks }} tasks: {% for e in examples %}{{ e.instruction }}|{% endfor %}")
    assert resolve_template(str(path), "en") == path


def test_unknown_template():
    with pytest.raises(TemplateError) as info:
        resolve_template("nope", "en")
    message = str(info.value)
    assert "prompt_template" in message and "'nope'" in message
    assert "generate_en.jinja" in message  # lists what is available


def test_template_syntax_error(tmp_path, seeds_en):
    path = tmp_path / "broken.jinja"
    path.write_text("line one\n{% for x in %}\n")
    with pytest.raises(TemplateError, match=r"broken\.jinja:2: template syntax error"):
        PromptBuilder(path, seeds_en, 0, 3, 5, "structured")


def test_custom_template_renders(tmp_path, seeds_en):
    path = tmp_path / "mine.jinja"
    path.write_text("{{ num_tasks }}|{{ response_mode }}|{% for e in examples %}{{ loop.index }}{% endfor %}")
    assert PromptBuilder(path, seeds_en, 0, 4, 6, "text").render(0).text == "6|text|1234\n"


def test_fingerprint_tracks_template_and_seeds(tmp_path, seeds_en):
    base = builder(seeds_en).fingerprint()
    assert builder(seeds_en, run_seed=7).fingerprint() == base  # the run seed is checked separately
    assert builder(seeds_en[:-1]).fingerprint() != base
    assert PromptBuilder(resolve_template(None, "ko"), seeds_en, 42, 3, 7, "structured").fingerprint() != base


def test_template_with_undefined_variable_fails_at_construction(tmp_path, seeds_en):
    path = tmp_path / "typo.jinja"
    path.write_text("{{ num_taks }} new tasks\n")
    with pytest.raises(TemplateError, match=r"typo\.jinja: .*num_taks"):
        PromptBuilder(path, seeds_en, 0, 3, 5, "structured")
