"""A real-model run replayed through today's curation chain: the default config keeps exactly what it kept.

``tests/data/demo_run/`` holds a run of the demo deployment made with SmolLM2-135M-Instruct on vLLM's CPU build
*before* curation became a chain of steps (``accepted.jsonl``, ``rejected.jsonl`` and the run's config). Every
candidate the model wrote is in one of the two files, with its request and position, and each truncated request's
raw text. A fake server answers request ``i`` with exactly what the model answered then, so the run's curation
sees the same candidates in the same order:

- with the config of then (the defaults, the new steps off), ``accepted.jsonl`` holds the stored records, in order,
  each field as it was but ``rouge_max`` (a lower bound on the best ROUGE-L score, which depends on how much the
  index pruned: it stays within the threshold), and every rejected candidate is rejected for the same reason;
- with the format checks on, no accepted record carries a leaked prompt label, and each record the checks
  drop is in ``rejected.jsonl`` with the step that dropped it and its evidence.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path


from pipeline.config import GenerationConfig
from pipeline.generate import GenerationRun
from pipeline.lifecycle import generate
from tests.test_stream_order import FakeOpenAI, completion_body

STORED = Path(__file__).parent / "data" / "demo_run"


def stored_lines(name: str) -> list[dict]:
    return [json.loads(line) for line in (STORED / name).read_text(encoding="utf-8").splitlines()]


def replay_script() -> dict[int, tuple[str, str]]:
    """Per request index: (completion text, finish_reason), rebuilt from the stored records."""
    tasks: dict[int, dict[int, dict]] = defaultdict(dict)
    script: dict[int, tuple[str, str]] = {}
    for record in stored_lines("accepted.jsonl") + stored_lines("rejected.jsonl"):
        if "candidate_index" in record:
            tasks[record["request_index"]][record["candidate_index"]] = {k: record[k] for k in ("instruction", "input", "output")}
        else:  # a request whose completion did not parse: its raw text, as the model left it
            script[record["request_index"]] = (record["raw"], record["finish_reason"])
    for index, by_position in tasks.items():
        assert sorted(by_position) == list(range(len(by_position))), f"request {index}: a candidate is missing"
        assert index not in script
        script[index] = (json.dumps({"tasks": [by_position[k] for k in sorted(by_position)]}), "stop")
    return script


class ReplayOpenAI(FakeOpenAI):
    def __init__(self, seed_to_index: dict[int, int], script: dict[int, tuple[str, str]]):
        super().__init__(seed_to_index, hang_index=-1)
        self.script = script

    def handle(self, handler, body: dict) -> None:
        index = self.seed_to_index[body["seed"]]
        text, finish_reason = self.script.get(index, ('{"tasks": []}', "stop"))
        payload = completion_body(index, body["model"], text)
        payload["choices"][0]["finish_reason"] = finish_reason
        try:
            handler._reply(200, payload)
        except OSError:  # the client went away (the target was reached)
            pass


def replay(tmp_path: Path, run_name: str, **overrides) -> GenerationConfig:
    stored = json.loads((STORED / "config.json").read_text())
    stored["llm"] |= {"base_urls": ["http://unused/v1"], "max_retries": 1, "request_timeout_s": 30}
    config = GenerationConfig.from_dict({**stored, "run_name": run_name, "output_dir": str(tmp_path),
                                         "export": {"hf_dataset": False, "charts": False}, **overrides})
    script = replay_script()
    builder = GenerationRun(config).builder
    seed_to_index = {builder.render(i).sampling_seed: i for i in range(config.resolved_max_requests)}
    with ReplayOpenAI(seed_to_index, script) as fake:
        generate(config.model_copy(update={"llm": config.llm.model_copy(update={"base_urls": [fake.base_url]})}), export=False)
    return config


def test_default_chain_reproduces_the_run_made_before_it(tmp_path):
    config = replay(tmp_path, "same")
    assert config.format_checks.enabled is False and config.decontamination.eval_sets == []

    def without_rouge_max(lines: list[str]) -> list[dict]:
        records = [json.loads(line) for line in lines]
        for record in records:
            assert 0.0 <= record.pop("rouge_max") <= 0.7
        return records

    accepted = (config.run_dir / "accepted.jsonl").read_text(encoding="utf-8").splitlines()
    assert without_rouge_max(accepted) == without_rouge_max((STORED / "accepted.jsonl").read_text(encoding="utf-8").splitlines())

    def reasons(records: list[dict]) -> list[tuple]:
        return [(r["request_index"], r.get("candidate_index"), r["reason"]) for r in records]

    rejected = stored_lines("rejected.jsonl")
    now = [json.loads(line) for line in (config.run_dir / "rejected.jsonl").read_text(encoding="utf-8").splitlines()]
    assert reasons(now) == reasons(rejected)
    # Every candidate's rejection names the step that made it, with that step's evidence.
    for record in now:
        if record["reason"] == "rouge_similar":
            assert record["step"] == "rouge" and 0.7 < record["score"] <= 1.0 and record["similar_to"]
        elif "candidate_index" in record:
            assert record["step"] in {"word_count", "exact_duplicate", "input_equals_output"}, record
    meta = json.loads((config.run_dir / "run.json").read_text())
    steps = meta["counts"]["steps"]
    assert list(steps) == ["empty_instruction", "word_count", "blacklist", "program_opening", "punctuation_start",
                           "language", "empty_output", "input_equals_output", "exact_duplicate", "rouge"]
    assert steps["rouge"]["kept"] == 30 and steps["rouge"]["dropped"] == 19
    assert steps["empty_instruction"]["kept"] == meta["counts"]["candidates"]
    assert all(s["tokens"] == 0 and s["seconds"] >= 0 for s in steps.values())


#: The generation prompt's scaffolding, as a model leaks it: "3. Instructions ...", "2. Input:", a field opening
#: with "Output:", a "###" line. Written here independently of pipeline.format_checks.
LEAKED = re.compile(r"\d+\.\s*(Instructions?|Input|Output)\b|^\s*(Instructions?|Input|Output)\s*:|^\s*###\s*$", re.MULTILINE)


def leaked(records: list[dict]) -> list[dict]:
    return [r for r in records if any(LEAKED.search(r[field]) for field in ("instruction", "input", "output"))]


def test_format_checks_drop_the_leaked_labels_of_the_real_model(tmp_path):
    leaked_before = leaked(stored_lines("accepted.jsonl"))
    assert len(leaked_before) == 2, "the stored run's two leaked-label records: the case the checks are for"

    config = replay(tmp_path, "checked", format_checks={"enabled": True}, max_requests=18)
    accepted = [json.loads(line) for line in (config.run_dir / "accepted.jsonl").read_text(encoding="utf-8").splitlines()]
    assert leaked(accepted) == []
    rejected = [json.loads(line) for line in (config.run_dir / "rejected.jsonl").read_text(encoding="utf-8").splitlines()]
    by_instruction = {r["instruction"]: r for r in rejected if "instruction" in r}
    for record in leaked_before:
        drop = by_instruction[record["instruction"]]
        assert drop["step"] == drop["reason"] == "leaked_label", drop
        assert drop["field"] in ("instruction", "input", "output") and drop["match"]


def test_decontamination_drops_what_an_eval_set_holds_through_a_run(tmp_path):
    """An eval set holding two of the run's accepted tasks (as a benchmark would, reworded in case and
    punctuation): the run drops both as `contaminated`, with the item ids and the matched n-gram, keeps the rest."""
    stored = stored_lines("accepted.jsonl")
    long_enough = [r for r in stored if len(f"{r['instruction']} {r['input']}".split()) >= 16][:2]
    assert len(long_enough) == 2
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_text("".join(
        json.dumps({"id": f"item-{n}", "prompt": f"{r['instruction'].upper()}!! {r['input']}"}) + "\n" for n, r in enumerate(long_enough)
    ), encoding="utf-8")
    config = replay(tmp_path, "decontaminated", max_requests=18, decontamination={
        "eval_sets": [{"name": "planted", "path": str(eval_path), "text_fields": ["prompt"], "id_field": "id"}]})
    rejected = [json.loads(line) for line in (config.run_dir / "rejected.jsonl").read_text(encoding="utf-8").splitlines()]
    contaminated = [r for r in rejected if r["reason"] == "contaminated"]
    by_instruction = {r["instruction"]: r for r in contaminated}
    for n, planted in enumerate(long_enough):
        assert by_instruction[planted["instruction"]]["item_id"] == f"item-{n}"
    # Others that share a 13-word run with an item (the same recipe as input) go too; nothing else does.
    def words(text: str) -> str:
        return " ".join(re.findall(r"\w+", text.lower()))

    for r in contaminated:
        assert (r["benchmark"], r["step"]) == ("planted", "decontamination")
        item = long_enough[int(r["item_id"].removeprefix("item-"))]
        assert len(r["ngram"].split()) == 13
        assert r["ngram"] in words(f"{r['instruction']} {r['input']}") and r["ngram"] in words(f"{item['instruction']} {item['input']}")
    accepted = [json.loads(line) for line in (config.run_dir / "accepted.jsonl").read_text(encoding="utf-8").splitlines()]
    assert not {r["instruction"] for r in long_enough} & {r["instruction"] for r in accepted}
    steps = json.loads((config.run_dir / "run.json").read_text())["counts"]["steps"]
    assert steps["decontamination"]["dropped"] == len(contaminated)
