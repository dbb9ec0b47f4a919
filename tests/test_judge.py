"""The LLM judge step, through whole runs against a fake OpenAI-compatible server.

The fake answers generation requests (recognised by their sampling seed) with scripted tasks, and judge requests
(recognised by their judge seed, one per request and candidate position) with a score that the test chooses per
candidate. It records when each request arrived and finished, so the tests can show that

- scores and rationales land on accepted records, and below-threshold records are rejected as ``low_score`` with
  the rationale; an unrateable answer is kept unscored without a threshold and rejected with one;
- candidates that an order-independent step drops are never judged; judge tokens are counted in run.json;
- judging overlaps generation: judge requests are sent while generation requests are still open, and the consumer
  does not wait for judgments of later requests;
- a judge that fails for good fails the run resumably: what was committed is kept, the resumed run never re-judges
  a committed record, and it ends with exactly the records of a run that never failed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.config import ExportConfig, GenerationConfig, LLMConfig
from pipeline.export import export_run
from pipeline.judge import JUDGMENT_SCHEMA, parse_judgment
from pipeline.lifecycle import generate
from pipeline.llm import LLMUnavailableError
from pipeline.prompts import derive_seed
from tests.test_run_paths import fresh_task
from tests.test_stream_order import FakeOpenAI, completion_body

TASKS = 3
RUN_SEED = 42


def score_for(index: int, position: int) -> int:
    """The score the fake judge gives: spread over 1-5, and the same on every call."""
    return 1 + (7 * index + 3 * position) % 5


def tasks_for(index: int) -> list[dict[str, str]]:
    tasks = [fresh_task(index, k) for k in range(TASKS)]
    if index % 4 == 1:
        tasks[2] = {**tasks[2], "instruction": "Too short."}  # word_count drops it before the judge
    return tasks


class JudgeFake(FakeOpenAI):
    def __init__(self, requests: int = 200, judge_delay_s: float = 0.0, unrateable: set[tuple[int, int]] = frozenset(),
                 failing_judge: set[int] = frozenset()):
        super().__init__({derive_seed(RUN_SEED, i, "sampling"): i for i in range(requests)}, hang_index=-1)
        self.judge_seeds = {derive_seed(RUN_SEED, i, f"judge:{k}"): (i, k) for i in range(requests) for k in range(TASKS)}
        self.judge_delay_s = judge_delay_s
        self.unrateable = set(unrateable)
        self.failing_judge = set(failing_judge)
        self.log: list[tuple[float, str, str, object]] = []  # (time, "start"|"end", "gen"|"judge", key)
        self.judged: list[tuple[int, int]] = []
        self.judge_bodies: list[dict] = []
        self.judge_answers = 0  # judge requests answered with a judgment (HTTP 200)

    def handle(self, handler, body: dict) -> None:
        seed = body["seed"]
        if seed in self.judge_seeds:
            key = self.judge_seeds[seed]
            kind = "judge"
        else:
            key = self.seed_to_index[seed]
            kind = "gen"
        with self.lock:
            self.log.append((time.monotonic(), "start", kind, key))
            if kind == "judge":
                self.judged.append(key)
                self.judge_bodies.append(body)
        try:
            if kind == "gen":
                time.sleep(0.03)
                payload = completion_body(key, body["model"], json.dumps({"tasks": tasks_for(key)}))
            else:
                time.sleep(self.judge_delay_s)
                index, position = key
                if index in self.failing_judge:
                    handler._reply(500, {"error": {"message": "judge died", "type": "fake_error"}})
                    return
                if key in self.unrateable:
                    content = "I cannot rate this."
                else:
                    content = json.dumps({"rationale": f"rated {index}/{position}", "score": score_for(index, position)})
                payload = completion_body(index, body["model"], content)
                payload["usage"] = {"prompt_tokens": 200, "completion_tokens": 20, "total_tokens": 220}
                with self.lock:
                    self.judge_answers += 1
            handler._reply(200, payload)
        except OSError:
            pass
        finally:
            with self.lock:
                self.log.append((time.monotonic(), "end", kind, key))


def make_config(tmp_path: Path, url: str, run_name: str, **overrides) -> GenerationConfig:
    llm = LLMConfig(base_urls=[url], model="fake", max_concurrency=4, request_timeout_s=20, max_retries=1,
                    backoff_initial_s=0.05, backoff_max_s=0.1, max_tokens=64)
    values = dict(run_name=run_name, output_dir=str(tmp_path / "out"), target=12, tasks_per_request=TASKS, seed=RUN_SEED,
                  max_requests=60, llm=llm, export=ExportConfig(hf_dataset=False, charts=False),
                  judge={"enabled": True, "threshold": 3})
    values.update(overrides)
    return GenerationConfig(**values)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_parse_judgment():
    assert parse_judgment('{"rationale": "Correct.", "score": 4}') == (4, "Correct.", None)
    assert parse_judgment('{"rationale": "x", "score": 4.0}')[0] == 4
    assert parse_judgment('{"rationale": "x", "score": 7}')[0] is None
    assert parse_judgment('{"rationale": "x", "score": true}')[0] is None
    assert parse_judgment("Score: 2. The answer is wrong.")[:2] == (2, "Score: 2. The answer is wrong.")
    assert parse_judgment("between 3 and 4")[0] is None  # two candidates: no guess
    score, _, error = parse_judgment("no idea")
    assert score is None and "not the JSON" in error
    assert JUDGMENT_SCHEMA["properties"]["score"] == {"type": "integer", "minimum": 1, "maximum": 5}


def test_judge_scores_rejects_below_threshold_and_skips_what_filters_drop(tmp_path):
    unrateable = {(0, 1)}
    with JudgeFake(unrateable=unrateable) as fake:
        config = make_config(tmp_path, fake.base_url, "judged")
        summary = generate(config, export=False)
    accepted = lines(config.run_dir / "accepted.jsonl")
    rejected = lines(config.run_dir / "rejected.jsonl")
    assert summary.accepted == len(accepted) >= config.target
    for record in accepted:
        key = (record["request_index"], record["candidate_index"])
        assert record["judge_score"] == score_for(*key) >= 3
        assert record["judge_rationale"] == f"rated {key[0]}/{key[1]}"
        assert list(record)[-3:] == ["judge_score", "judge_rationale", "seed_ids"]
    low = [r for r in rejected if r["reason"] == "low_score"]
    assert low and all(r["step"] == "judge" and r["judge_score"] == score_for(r["request_index"], r["candidate_index"]) < 3
                       for r in low)
    assert all(r["judge_rationale"] == f"rated {r['request_index']}/{r['candidate_index']}" for r in low)
    assert all(r["detail"] == f"judge score {r['judge_score']} < 3" for r in low)
    failed = [r for r in rejected if r["reason"] == "judge_failed"]
    assert [(r["request_index"], r["candidate_index"]) for r in failed] == [(0, 1)]
    assert failed[0]["judge_rationale"] == "I cannot rate this."
    # What word_count drops is never sent to the judge; everything else that arrived was.
    too_short = {(r["request_index"], r["candidate_index"]) for r in rejected if r["reason"] == "too_short"}
    assert too_short and not too_short & set(fake.judged)
    # Each judge request: the judge prompt with the record, the schema, temperature 0 and a per-record seed.
    body = fake.judge_bodies[0]
    assert body["response_format"]["json_schema"]["schema"] == JUDGMENT_SCHEMA
    assert body["temperature"] == 0.0 and body["max_tokens"] == 256
    assert "Rate the accuracy" in body["messages"][0]["content"]
    meta = json.loads((config.run_dir / "run.json").read_text())
    judge = meta["judge"]
    # Counted as the client got them: judge requests still in flight when the target was reached are cancelled.
    consumed = {(r["request_index"], r["candidate_index"]) for r in accepted + low + failed}
    assert len(consumed) <= judge["requests"] == meta["usage"]["judge_requests"] <= fake.judge_answers
    assert judge["prompt_tokens"] == 200 * judge["requests"] and judge["completion_tokens"] == 20 * judge["requests"]
    assert judge["tokens_per_accepted"] == round(220 * judge["requests"] / len(accepted), 1)
    steps = meta["counts"]["steps"]
    assert list(steps)[-2:] == ["rouge", "judge"]
    assert steps["judge"]["dropped"] == len(low) + len(failed) and steps["judge"]["kept"] == len(accepted)
    assert 0 < steps["judge"]["tokens"] <= 220 * len(fake.judged)

    # The score is in the dataset (parquet, HF dataset), and the card shows the judge's cost and the steps.
    result = export_run(config.run_dir, hf_dataset=True, charts=False)
    assert pq.read_table(result.parquet).column("judge_score").to_pylist() == [r["judge_score"] for r in accepted]
    assert json.loads(result.alpaca_json.read_text())[0].keys() == {"instruction", "input", "output"}
    card = result.card.read_text()
    assert f"| judge tokens per accepted record | {judge['tokens_per_accepted']} |" in card
    assert f"| judge | {len(accepted)} | {len(low) + len(failed)} |" in card
    sample = next(r for r in result.stats.rejected_samples if r["reason"] == "low_score")
    assert sample["step"] == "judge" and '"judge_rationale": "rated' in sample["evidence"]


def test_without_threshold_every_record_is_scored_and_none_rejected(tmp_path):
    with JudgeFake(unrateable={(0, 1)}) as fake:
        config = make_config(tmp_path, fake.base_url, "scored", judge={"enabled": True})
        generate(config, export=False)
    accepted = lines(config.run_dir / "accepted.jsonl")
    assert {r["reason"] for r in lines(config.run_dir / "rejected.jsonl")} <= {"too_short"}
    unscored = [r for r in accepted if r["judge_score"] is None]
    assert [(r["request_index"], r["candidate_index"]) for r in unscored] == [(0, 1)]
    assert unscored[0]["judge_rationale"] == "the judgment is not the JSON asked for"
    assert {r["judge_score"] for r in accepted} - {None} == {1, 2, 3, 4, 5}


def test_judging_overlaps_generation(tmp_path):
    """Slow judgments: generation requests go on being sent and answered while earlier requests are judged."""
    with JudgeFake(judge_delay_s=0.15) as fake:
        config = make_config(tmp_path, fake.base_url, "overlap", target=24)
        generate(config, export=False)
    log = sorted(fake.log, key=lambda e: e[0])
    open_judges = 0
    generation_started_while_judging = 0
    for _, event, kind, _ in log:
        if kind == "judge":
            open_judges += 1 if event == "start" else -1
        elif event == "start" and open_judges > 0:
            generation_started_while_judging += 1
    assert generation_started_while_judging >= 3, log[:40]
    # The first judge request went out before the last generation request was sent.
    first_judge = next(t for t, event, kind, _ in log if kind == "judge")
    last_generation = max(t for t, event, kind, _ in log if kind == "gen" and event == "start")
    assert first_judge < last_generation


def test_judge_failure_fails_resumably_and_resume_never_rejudges(tmp_path):
    with JudgeFake() as reference_fake:
        reference = make_config(tmp_path, reference_fake.base_url, "reference")
        generate(reference, export=False)

    with JudgeFake(failing_judge={3}) as fake:
        config = make_config(tmp_path, fake.base_url, "resumed")
        with pytest.raises(LLMUnavailableError):
            generate(config, export=False)
        meta = json.loads((config.run_dir / "run.json").read_text())
        assert meta["status"] == "failed" and meta["progress"]["next_request_index"] == 3
        kept = (config.run_dir / "accepted.jsonl").read_bytes()
        assert kept and {r["request_index"] for r in lines(config.run_dir / "accepted.jsonl")} <= {0, 1, 2}
        first_session = len(fake.judged)
        first_answers = meta["judge"]["requests"]
        assert 0 < first_answers <= fake.judge_answers
        fake.failing_judge.clear()
        generate(config, export=False)
    rejudged = [key for key in fake.judged[first_session:] if key[0] < 3]
    assert rejudged == []
    final = (config.run_dir / "accepted.jsonl").read_bytes()
    assert final.startswith(kept)
    assert final == (reference.run_dir / "accepted.jsonl").read_bytes()
    meta = json.loads((config.run_dir / "run.json").read_text())
    assert meta["status"] == "completed" and meta["sessions"] == 2
    # Judge requests of both sessions are in the run's totals.
    assert first_answers < meta["judge"]["requests"] <= fake.judge_answers


def test_a_separate_judge_endpoint_gets_every_judgment_and_nothing_else(tmp_path):
    with JudgeFake() as generator, JudgeFake() as judge:
        config = make_config(tmp_path, generator.base_url, "separate",
                             judge={"enabled": True, "threshold": 3, "llm": {"base_urls": [judge.base_url], "model": "judge-model",
                                                                               "max_retries": 1, "backoff_initial_s": 0.05}})
        generate(config, export=False)
    assert generator.judged == [] and generator.judge_answers == 0
    assert judge.judged and {body["model"] for body in judge.judge_bodies} == {"judge-model"}
    assert not any(kind == "gen" for _, _, kind, _ in judge.log)
    accepted = lines(config.run_dir / "accepted.jsonl")
    assert all(r["judge_score"] == score_for(r["request_index"], r["candidate_index"]) >= 3 for r in accepted)


def test_korean_runs_use_the_korean_judge_prompt():
    from pipeline.judge import Judge
    from pipeline.records import Candidate

    candidate = Candidate("다음 문장을 영어로 번역하세요.", "오늘은 날씨가 좋네요.", "The weather is nice today.")
    korean = Judge(GenerationConfig(language="ko", judge={"enabled": True})).render(candidate)
    assert "1점에서 5점" in korean and "지시문:\n다음 문장을 영어로 번역하세요." in korean and "입력:\n오늘은 날씨가 좋네요." in korean
    english = Judge(GenerationConfig(judge={"enabled": True})).render(Candidate("Name a colour.", "", "Blue."))
    assert "Input:\n(none)" in english and english.index("Rate the accuracy") < english.index("Name a colour.")
    # The fixed rubric comes first: two records' prompts share everything up to the record (vLLM's prefix cache).
    other = Judge(GenerationConfig(judge={"enabled": True})).render(Candidate("Name a fruit.", "", "Apple."))
    shared = next(i for i, (a, b) in enumerate(zip(english, other)) if a != b)
    assert shared >= len(english) - len("Name a colour.\n\nInput:\n(none)\n\nResponse:\nBlue.\n")
