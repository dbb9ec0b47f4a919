"""Config paths through whole runs, the export, and the ``dedup`` / ``export`` / ``make-tiny-model`` commands.

Runs go against :class:`ScriptedOpenAI`, the fake OpenAI-compatible server of ``tests/test_stream_order.py`` with
the answer to each request index given by the test (no vLLM). Request ``i`` is recognised by its sampling seed,
``derive_seed(run seed, i, "sampling")``.

- ``dedup.context_runs``: a later run rejects near-copies of what an earlier run accepted, as ``rouge_similar``.
- ``dedup.enabled = False``: near-copies are accepted and records carry no ``rouge_max``.
- ``response_mode = "text"``: numbered Instruction/Input/Output blocks become records; no JSON schema is sent.
- ``max_requests`` before the target: the run is ``incomplete`` with the reason, and a raised cap continues it.
- The export: alpaca_data.json, the parquet file, the HF dataset, the card and the charts hold the accepted
  records, in request order.
- ``selfinstruct dedup`` / ``export`` / ``make-tiny-model`` through ``pipeline.cli.main``.
"""

from __future__ import annotations

import json
import random
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from rouge_score import rouge_scorer

from pipeline.cli import main
from pipeline.config import DedupConfig, ExportConfig, GenerationConfig, LLMConfig
from pipeline.lifecycle import generate
from pipeline.prompts import derive_seed
from pipeline.store import RunDirectoryError
from tests.test_stream_order import WORDS, FakeOpenAI, completion_body

TASKS = 2  # tasks per request in every run here
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: (HTTP status, body text): the message content for 200, the error message otherwise.
Answer = Callable[[int, int], tuple[int, str]]


# ---- the scripted fake server -------------------------------------------------------------------------------------
@dataclass
class Received:
    index: int | None
    attempt: int
    body: dict[str, Any]
    authorization: str | None


class ScriptedOpenAI(FakeOpenAI):
    """:class:`FakeOpenAI` answering request ``index`` (attempt ``attempt``, from 1) with ``answer(index, attempt)``.

    Every request is kept in :attr:`received`. A sampling seed that names no request index of the run seed is
    answered with HTTP 400, so that a test with the wrong run seed fails loudly.
    """

    def __init__(self, answer: Answer, run_seed: int = 42, requests: int = 500):
        super().__init__({derive_seed(run_seed, i, "sampling"): i for i in range(requests)}, hang_index=-1)
        self.answer = answer
        self.received: list[Received] = []

    def handle(self, handler, body: dict) -> None:
        index = self.seed_to_index.get(body.get("seed"))
        with self.lock:
            attempt = self.attempts[index] = self.attempts.get(index, 0) + 1
            self.events.append((time.monotonic(), "recv", index, attempt))
            self.received.append(Received(index, attempt, body, handler.headers.get("Authorization")))
        status, text = (400, f"unknown sampling seed {body.get('seed')}") if index is None else self.answer(index, attempt)
        try:
            if status != 200:
                handler._reply(status, {"error": {"message": text, "type": "fake_error"}})
                return
            handler._reply(200, completion_body(index, body["model"], text))
            with self.lock:
                self.events.append((time.monotonic(), "sent", index, attempt))
        except OSError:  # the client went away
            pass

    def indices(self, start: int = 0) -> list[int]:
        """Request indices received (every attempt), from the ``start``-th request on."""
        return [r.index for r in self.received[start:]]


def fresh_task(index: int, k: int) -> dict[str, str]:
    """Task ``k`` of request ``index``: random plain words, far apart in ROUGE-L; odd ``k`` has an input."""
    rng = random.Random(1000 * index + k)
    return {
        "instruction": "Describe " + " ".join(rng.sample(WORDS, 9)) + ".",
        "input": "" if k % 2 == 0 else " ".join(rng.sample(WORDS, 6)).capitalize() + ".",
        "output": " ".join(rng.sample(WORDS, 12)).capitalize() + ".",
    }


def fresh_tasks(index: int, n: int = TASKS) -> list[dict[str, str]]:
    return [fresh_task(index, k) for k in range(n)]


def near_copy(task: dict[str, str]) -> dict[str, str]:
    """The same task asked politely: ROUGE-L about 0.95 against the original, but not an exact duplicate."""
    instruction = task["instruction"]
    return {**task, "instruction": "Please " + instruction[0].lower() + instruction[1:]}


def structured(tasks: list[dict[str, str]]) -> tuple[int, str]:
    return 200, json.dumps({"tasks": tasks})


def rouge_l(new: str, old: str) -> float:
    """Alpaca's score: ``rouge_scorer._score_lcs(new, old).fmeasure`` (new = target, old = prediction)."""
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False).score(new, old)["rougeL"].fmeasure


def make_config(tmp_path: Path, url: str, run_name: str, **overrides) -> GenerationConfig:
    llm = LLMConfig(base_urls=[url], model="fake", max_concurrency=2, request_timeout_s=20, max_retries=2,
                    backoff_initial_s=0.05, backoff_max_s=0.1, max_tokens=64)
    values = dict(run_name=run_name, output_dir=str(tmp_path / "out"), target=8, tasks_per_request=TASKS,
                  max_requests=40, llm=llm, export=ExportConfig(hf_dataset=False, charts=False))
    values.update(overrides)
    return GenerationConfig(**values)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def read_meta(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "run.json").read_text(encoding="utf-8"))


def alpaca(record: dict[str, Any]) -> dict[str, str]:
    return {"instruction": record["instruction"], "input": record["input"], "output": record["output"]}


# ---- dedup.context_runs ---------------------------------------------------------------------------------------------
def test_context_runs_reject_near_copies_of_what_an_earlier_run_accepted(tmp_path):
    """Run ``first`` accepts 8 fresh tasks. Run ``second`` (context_runs=[first]) gets, for each request, a near-copy
    of one of them plus a new task: the copies are rejected as rouge_similar against first's instruction, the new
    ones accepted. A control run without context_runs accepts the very same answers."""
    phase = {"name": "first"}

    def answer(index: int, attempt: int) -> tuple[int, str]:
        if phase["name"] == "first":
            return structured(fresh_tasks(index))
        return structured([near_copy(fresh_task(index, 0)), fresh_task(100 + index, 1)])

    with ScriptedOpenAI(answer) as fake:
        first = generate(make_config(tmp_path, fake.base_url, "first", target=8), export=False)
        phase["name"] = "second"
        second = generate(make_config(tmp_path, fake.base_url, "second", target=4,
                                      dedup=DedupConfig(context_runs=["first"])), export=False)
        control = generate(make_config(tmp_path, fake.base_url, "control", target=8), export=False)

    out = tmp_path / "out"
    first_accepted = read_jsonl(out / "first" / "accepted.jsonl")
    assert first.accepted == 8 and [alpaca(r) for r in first_accepted] == [t for i in range(4) for t in fresh_tasks(i)]

    # second: the 4 new tasks accepted, the 4 near-copies of first's (i, 0) tasks rejected against them.
    assert second.reason == "target reached" and second.requests == 4
    assert [alpaca(r) for r in read_jsonl(out / "second" / "accepted.jsonl")] == [fresh_task(100 + i, 1) for i in range(4)]
    rejected = read_jsonl(out / "second" / "rejected.jsonl")
    assert [r["reason"] for r in rejected] == ["rouge_similar"] * 4
    assert [r["instruction"] for r in rejected] == [near_copy(fresh_task(i, 0))["instruction"] for i in range(4)]
    assert [r["similar_to"] for r in rejected] == [fresh_task(i, 0)["instruction"] for i in range(4)]
    for r in rejected:
        assert r["score"] == pytest.approx(rouge_l(r["instruction"], r["similar_to"]))
        assert r["score"] > 0.7 and r["detail"] == f"ROUGE-L {r['score']:.3f}"
    meta = read_meta(out / "second")
    assert meta["status"] == "completed"
    assert meta["counts"]["rejected"] == {"rouge_similar": 4}
    assert meta["config"]["dedup"]["context_runs"] == ["first"]
    # first's files are context only: untouched by the second run.
    assert read_jsonl(out / "first" / "accepted.jsonl") == first_accepted

    # control (no context runs): the same answers are all accepted, so the rejections above came from first.
    assert control.accepted == 8
    assert [alpaca(r) for r in read_jsonl(out / "control" / "accepted.jsonl")][0::2] == [
        near_copy(fresh_task(i, 0)) for i in range(4)
    ]


def test_a_missing_context_run_is_refused_before_any_request(tmp_path):
    with ScriptedOpenAI(lambda index, attempt: structured(fresh_tasks(index))) as fake:
        config = make_config(tmp_path, fake.base_url, "later", dedup=DedupConfig(context_runs=["never-ran"]))
        with pytest.raises(RunDirectoryError) as info:
            generate(config, export=False)
        assert fake.received == []
    assert str(info.value) == f"dedup.context_runs: {tmp_path / 'out' / 'never-ran' / 'accepted.jsonl'} not found"


# ---- dedup.enabled ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("enabled", [False, True])
def test_dedup_enabled_switches_the_rouge_filter(tmp_path, enabled):
    """Each request answers a task and its near-copy. Dedup off: both accepted, no ``rouge_max``; on (control): the
    copy is rejected as rouge_similar and accepted records carry ``rouge_max``."""
    with ScriptedOpenAI(lambda index, attempt: structured([fresh_task(index, 0), near_copy(fresh_task(index, 0))])) as fake:
        config = make_config(tmp_path, fake.base_url, f"dedup-{enabled}", target=6, dedup=DedupConfig(enabled=enabled))
        summary = generate(config, export=False)

    accepted = read_jsonl(config.run_dir / "accepted.jsonl")
    rejected = read_jsonl(config.run_dir / "rejected.jsonl")
    meta = read_meta(config.run_dir)
    assert summary.reason == "target reached" and meta["status"] == "completed"
    if not enabled:
        assert summary.requests == 3
        assert [alpaca(r) for r in accepted] == [t for i in range(3) for t in (fresh_task(i, 0), near_copy(fresh_task(i, 0)))]
        assert all("rouge_max" not in r and "most_similar" not in r for r in accepted)
        assert rejected == [] and meta["counts"]["rejected"] == {}
    else:
        assert summary.requests == 6
        assert [alpaca(r) for r in accepted] == [fresh_task(i, 0) for i in range(6)]
        assert all(0 <= r["rouge_max"] <= 0.7 for r in accepted)
        # The 6th request's copy comes after the target was reached: it is not looked at.
        assert [(r["reason"], r["similar_to"]) for r in rejected] == [
            ("rouge_similar", fresh_task(i, 0)["instruction"]) for i in range(5)
        ]
        assert meta["counts"]["rejected"] == {"rouge_similar": 5}


# ---- response_mode = "text" -------------------------------------------------------------------------------------------
def text_answer(tasks: list[dict[str, str]], chatter: str = "Here are the new tasks:\n\n", extra: str = "") -> str:
    blocks = [
        f"{n}. Instruction: {t['instruction']}\n{n}. Input:\n{t['input'] or '<noinput>'}\n{n}. Output:\n{t['output']}"
        for n, t in enumerate(tasks, 1)
    ]
    return chatter + "\n###\n".join(blocks) + extra


def test_text_mode_parses_numbered_blocks_into_records(tmp_path):
    """Alpaca's text format: numbered blocks separated by ###, <noinput> for no input. Request 1 also sends a third
    block without an output, which is rejected as parse_error; no request carries a response_format."""

    def answer(index: int, attempt: int) -> tuple[int, str]:
        extra = "\n###\n3. Instruction: Name a colour.\n3. Input:\n<noinput>\n" if index == 1 else "\n###\n"
        return 200, text_answer(fresh_tasks(index), extra=extra)

    with ScriptedOpenAI(answer) as fake:
        config = make_config(tmp_path, fake.base_url, "text", target=6, response_mode="text")
        summary = generate(config, export=False)
        received = list(fake.received)

    assert summary.reason == "target reached" and summary.requests == 3
    accepted = read_jsonl(config.run_dir / "accepted.jsonl")
    assert [alpaca(r) for r in accepted] == [t for i in range(3) for t in fresh_tasks(i)]
    assert [r["input"] == "" for r in accepted] == [True, False] * 3  # <noinput> became ""
    rejected = read_jsonl(config.run_dir / "rejected.jsonl")
    assert [(r["request_index"], r["reason"]) for r in rejected] == [(1, "parse_error")]
    # (The block number counts the leading chatter as a block: "block 4" for the task numbered 3.)
    assert re.fullmatch(r"block \d+: missing instruction or output", rejected[0]["detail"]), rejected[0]["detail"]
    assert rejected[0]["raw"].endswith("3. Instruction: Name a colour.\n3. Input:\n<noinput>\n")
    # Text mode sends no JSON schema, and its prompt asks for the numbered format.
    assert received and all("response_format" not in r.body for r in received)
    prompt = received[0].body["messages"][0]["content"]
    assert '"N. Instruction:"' in prompt and "<noinput>" in prompt and '{"tasks"' not in prompt


# ---- max_requests before the target: incomplete ----------------------------------------------------------------------
def test_max_requests_before_target_is_incomplete_and_a_raised_cap_continues(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text(
        "llm: {max_concurrency: 2, max_retries: 1, backoff_initial_s: 0.05, backoff_max_s: 0.1}\n"
        "export: {hf_dataset: false, charts: false}\n"
    )
    with ScriptedOpenAI(lambda index, attempt: structured(fresh_tasks(index))) as fake:
        argv = ["generate", "--config", "cfg.yaml", "--output-dir", "out", "--run-name", "short", "--target", "100",
                "--tasks-per-request", str(TASKS), "--base-url", fake.base_url]
        assert main(argv + ["--max-requests", "3"]) == 0
        out, err = capsys.readouterr()
        assert out.splitlines() == [f"6 records (max_requests reached) in {Path('out/short')}",
                                    f"dataset: {Path('out/short/alpaca_data.json')}"]
        assert sorted(fake.indices()) == [0, 1, 2]
        meta = read_meta(tmp_path / "out" / "short")
        assert (meta["status"], meta["error"]) == ("incomplete", "max_requests reached")
        assert meta["progress"]["next_request_index"] == 3 and meta["counts"]["requests"] == 3
        assert meta["counts"]["accepted"] == 6
        assert len(json.loads((tmp_path / "out" / "short" / "alpaca_data.json").read_text())) == 6

        # The same command again: nothing to send, still incomplete with the reason.
        assert main(argv + ["--max-requests", "3"]) == 0
        capsys.readouterr()
        assert len(fake.received) == 3
        meta = read_meta(tmp_path / "out" / "short")
        assert (meta["status"], meta["error"], meta["sessions"]) == ("incomplete", "max_requests reached", 2)

        # max_requests shapes no request: raising it resumes at request 3.
        assert main(argv + ["--max-requests", "5"]) == 0
        out, _ = capsys.readouterr()
        assert sorted(fake.indices(3)) == [3, 4]
    assert out.splitlines()[0] == f"10 records (max_requests reached) in {Path('out/short')}"
    meta = read_meta(tmp_path / "out" / "short")
    assert (meta["status"], meta["error"]) == ("incomplete", "max_requests reached")
    assert meta["progress"]["next_request_index"] == 5
    assert [alpaca(r) for r in read_jsonl(tmp_path / "out" / "short" / "accepted.jsonl")] == [
        t for i in range(5) for t in fresh_tasks(i)
    ]


# ---- the export -----------------------------------------------------------------------------------------------------
def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; fails unless the file is a PNG whose first chunk is IHDR."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert data[12:16] == b"IHDR", path
    assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82", path  # complete: ends with the IEND chunk
    return struct.unpack(">II", data[16:24])


#: The charts of a run without a judge: every task starts with "Describe", so the verb chart has a verb to show.
REPORT_CHARTS = ("funnel", "rouge_to_seed", "rouge_to_other", "verbs", "lengths")


def assert_export_matches(run_dir: Path, records: list[dict[str, str]]) -> None:
    """alpaca_data.json, the parquet file and the HF dataset hold ``records`` in order; card and charts exist."""
    import datasets
    import pyarrow.parquet as pq
    from PIL import Image

    assert json.loads((run_dir / "alpaca_data.json").read_text(encoding="utf-8")) == records
    table = pq.read_table(run_dir / "alpaca_data.parquet")
    assert table.column_names == ["instruction", "input", "output"]
    assert table.to_pylist() == records
    dataset = datasets.load_from_disk(str(run_dir / "dataset"))
    assert dataset.column_names == ["instruction", "input", "output"]
    assert dataset.to_list() == records
    card = (run_dir / "README.md").read_text(encoding="utf-8")
    assert (run_dir / "dataset" / "README.md").read_text(encoding="utf-8") == card
    assert card.startswith("---\n") and "\n# Self-instruct dataset `" in card
    assert f"\n{len(records)} instruction records in Alpaca format" in card
    assert "generated with `fake`" in card
    charts = [f"{name}.png" for name in REPORT_CHARTS]
    for name in charts:
        assert f"(charts/{name})" in card, name
    assert sorted(p.name for p in (run_dir / "charts").iterdir()) == sorted(charts)
    report = json.loads((run_dir / "quality.json").read_text(encoding="utf-8"))
    assert report["figures"]["accepted"] == len(records)
    assert f"| accepted records | {len(records)} |" in card
    assert (run_dir / "audit_sheet.csv").read_text(encoding="utf-8-sig").count("\n") >= len(records) + 1
    for name in charts:
        path = run_dir / "charts" / name
        width, height = png_size(path)
        assert width >= 300 and height >= 200, (name, width, height)
        with Image.open(path) as image:
            image.verify()  # checks every chunk's CRC


def test_export_writes_json_parquet_dataset_card_and_charts_in_request_order(tmp_path):
    with ScriptedOpenAI(lambda index, attempt: structured(fresh_tasks(index))) as fake:
        config = make_config(tmp_path, fake.base_url, "export", target=10,
                             export=ExportConfig(hf_dataset=True, charts=True))
        summary = generate(config)

    run_dir = config.run_dir
    records = [alpaca(r) for r in read_jsonl(run_dir / "accepted.jsonl")]
    assert records == [t for i in range(5) for t in fresh_tasks(i)]
    assert records != sorted(records, key=lambda r: r["instruction"])  # so that the order checks mean something
    assert sum(1 for r in records if r["input"]) == 5  # the input column is not all empty
    assert_export_matches(run_dir, records)
    card = (run_dir / "README.md").read_text(encoding="utf-8")
    assert "# Self-instruct dataset `export`" in card
    result = summary.export
    assert result.stats.records == 10 and result.stats.with_input == 5
    assert result.alpaca_json == run_dir / "alpaca_data.json" and result.parquet == run_dir / "alpaca_data.parquet"
    assert result.hf_dataset == run_dir / "dataset" and result.card == run_dir / "README.md"
    assert sorted(result.charts) == sorted(run_dir / "charts" / f"{name}.png" for name in REPORT_CHARTS)
    leftovers = [p for p in run_dir.rglob(".*") if p.name != ".lock"]
    assert leftovers == [], leftovers  # no temporary file left behind


# ---- selfinstruct export ---------------------------------------------------------------------------------------------
def test_export_command_rebuilds_every_file_of_a_run(tmp_path, capsys):
    with ScriptedOpenAI(lambda index, attempt: structured(fresh_tasks(index))) as fake:
        config = make_config(tmp_path, fake.base_url, "cli-export", target=6)
        generate(config, export=False)
    run_dir = config.run_dir
    records = [alpaca(r) for r in read_jsonl(run_dir / "accepted.jsonl")]
    assert len(records) == 6
    assert not (run_dir / "alpaca_data.json").exists()

    # --no-hf --no-charts: the JSON and the card only.
    assert main(["export", str(run_dir), "--no-hf", "--no-charts"]) == 0
    out, _ = capsys.readouterr()
    assert out == f"6 records: {run_dir / 'alpaca_data.json'}\n"
    assert json.loads((run_dir / "alpaca_data.json").read_text()) == records
    assert (run_dir / "README.md").exists()
    for absent in ("alpaca_data.parquet", "dataset", "charts"):
        assert not (run_dir / absent).exists(), absent

    # Stale files are replaced from accepted.jsonl, not kept.
    (run_dir / "alpaca_data.json").write_text("[]")
    (run_dir / "README.md").write_text("stale card")
    assert main(["export", str(run_dir)]) == 0
    out, _ = capsys.readouterr()
    assert out == f"6 records: {run_dir / 'alpaca_data.json'}\n"
    assert_export_matches(run_dir, records)
    assert "# Self-instruct dataset `cli-export`" in (run_dir / "README.md").read_text()


@pytest.mark.parametrize("make", ["empty_dir", "missing"])
def test_export_command_on_a_directory_that_is_no_run_exits_2_naming_it(tmp_path, capsys, make):
    target = tmp_path / "not-a-run"
    if make == "empty_dir":
        target.mkdir()
        (target / "accepted.jsonl").write_text("")  # records alone do not make a run directory
    assert main(["export", str(target)]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"{target}: not a run directory (no run.json)\n")
    if make == "empty_dir":
        assert sorted(p.name for p in target.iterdir()) == ["accepted.jsonl"]
    else:
        assert not target.exists()


# ---- selfinstruct dedup ------------------------------------------------------------------------------------------------
SEEDS = ["Explain how a rainbow forms after a summer storm.", "Translate the sentence below into formal French."]
A = "Describe the river stone garden lamp near the old bridge."
B = "Write a haiku about winter mornings in a quiet harbor town."
#: A, a near-copy of A, a near-copy of seed 1, B, and A with more words changed (still a near-copy of A).
INSTRUCTIONS = [
    A,
    "Please describe the river stone garden lamp near the old bridge.",
    "Translate the sentence below into formal Spanish.",
    B,
    "Describe the river stone garden lamp near the new bridge.",
]


def write_dedup_inputs(tmp_path: Path) -> dict[str, Path]:
    paths = {"array": tmp_path / "in.json", "jsonl": tmp_path / "in.jsonl", "seeds": tmp_path / "seeds.jsonl"}
    paths["array"].write_text(json.dumps(INSTRUCTIONS))
    paths["jsonl"].write_text("".join(json.dumps({"instruction": t, "output": "x", "id": i}) + "\n" for i, t in enumerate(INSTRUCTIONS)))
    paths["seeds"].write_text("".join(json.dumps({"id": f"s{i}", "instruction": t}) + "\n" for i, t in enumerate(SEEDS)))
    return paths


def expected_decisions(with_seeds: bool) -> list[tuple[int, bool, int | None]]:
    """(index, kept, similar_to) with similar_to counting the seeds first, then the kept inputs."""
    base = len(SEEDS) if with_seeds else 0
    return [
        (0, True, None),
        (1, False, base + 0),  # near-copy of A, the first kept input
        (2, False, 1) if with_seeds else (2, True, None),  # near-copy of seed 1
        (3, True, None),
        (4, False, base + 0),
    ]


@pytest.mark.parametrize("source", ["array", "jsonl"])
@pytest.mark.parametrize("with_seeds", [True, False])
def test_dedup_command_writes_one_decision_per_input(tmp_path, capsys, source, with_seeds):
    paths = write_dedup_inputs(tmp_path)
    output = tmp_path / "decisions" / "out.jsonl"  # the parent directory is created
    argv = ["dedup", str(paths[source]), "-o", str(output)] + (["--seeds", str(paths["seeds"])] if with_seeds else [])
    assert main(argv) == 0
    out, err = capsys.readouterr()
    decisions = read_jsonl(output)
    assert [set(d) for d in decisions] == [{"index", "kept", "score", "similar_to"}] * len(INSTRUCTIONS)
    assert [(d["index"], d["kept"], d["similar_to"]) for d in decisions] == expected_decisions(with_seeds)
    indexed = (SEEDS if with_seeds else []) + [t for t, d in zip(INSTRUCTIONS, decisions) if d["kept"]]
    for text, d in zip(INSTRUCTIONS, decisions):
        if d["kept"]:
            assert 0 <= d["score"] <= 0.7
        else:  # a rejected input's score is its exact ROUGE-L against the item it names
            assert d["score"] == pytest.approx(rouge_l(text, indexed[d["similar_to"]]))
            assert d["score"] > 0.7
    summary = json.loads(out)  # with -o, the summary goes to stdout
    kept = sum(d["kept"] for d in decisions)
    assert {k: summary[k] for k in ("input", "output", "seeds", "total", "kept", "rejected", "threshold", "tokenizer")} == {
        "input": str(paths[source]), "output": str(output), "seeds": len(SEEDS) if with_seeds else 0,
        "total": len(INSTRUCTIONS), "kept": kept, "rejected": len(INSTRUCTIONS) - kept, "threshold": 0.7,
        "tokenizer": "rouge",
    }


def test_dedup_command_threshold_and_bad_input(tmp_path, capsys):
    paths = write_dedup_inputs(tmp_path)
    output = tmp_path / "out.jsonl"
    # At 0.99 no near-copy here scores above the threshold: everything is kept.
    assert main(["dedup", str(paths["array"]), "--threshold", "0.99", "-o", str(output)]) == 0
    capsys.readouterr()
    assert [d["kept"] for d in read_jsonl(output)] == [True] * len(INSTRUCTIONS)
    # A JSONL line without an instruction: exit 2 naming the file and line, and the old output is left alone.
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": A}) + "\n" + json.dumps({"text": B}) + "\n")
    before = output.read_bytes()
    assert main(["dedup", str(bad), "-o", str(output)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"{bad}:2: instruction: ")
    assert output.read_bytes() == before


def test_dedup_command_without_output_prints_the_decisions(tmp_path, capsys):
    paths = write_dedup_inputs(tmp_path)
    assert main(["dedup", str(paths["array"])]) == 0
    out, _ = capsys.readouterr()
    assert [json.loads(line)["index"] for line in out.splitlines()] == list(range(len(INSTRUCTIONS)))


# ---- selfinstruct make-tiny-model --------------------------------------------------------------------------------------
def test_make_tiny_model_command_writes_a_loadable_llama(tmp_path, capsys):
    from transformers import AutoConfig, AutoTokenizer

    directory = tmp_path / "models" / "tiny"
    assert main(["make-tiny-model", str(directory), "--arch", "llama"]) == 0
    out, _ = capsys.readouterr()
    assert out == f"{directory}\n"
    config = AutoConfig.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert config.model_type == "llama" and config.architectures == ["LlamaForCausalLM"]
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (2, 128, 2)
    assert config.hidden_size // config.num_attention_heads == 64  # vLLM's CPU kernels reject head_dim 16
    assert config.vocab_size == len(tokenizer)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", None)
    assert (config.bos_token_id, config.eos_token_id) == (tokenizer.bos_token_id, tokenizer.eos_token_id)
    text = "Explain why the sky is blue in simple terms."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert 1 < len(ids) < len(text)  # a trained BPE merges characters
    assert tokenizer.decode(ids) == text
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<s>### user:\nHi\n### assistant:\n"
    assert (directory / "model.safetensors").stat().st_size > 100_000
