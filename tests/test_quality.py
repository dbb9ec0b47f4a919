"""The quality report's metrics on hand-made inputs with known answers, and the report of a hand-made run directory."""

from __future__ import annotations

import gzip
import json
import math
import random
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from pipeline import diversity, quality
from pipeline.text import tokenize_rouge

SHARED = Path(__file__).resolve().parents[2] / "shared" / "bench"
SEEDS_DIR = Path(__file__).resolve().parents[1] / "seeds"


# ---- diversity ---------------------------------------------------------------------------------------------------

def test_distinct_n_counts_distinct_ngrams_over_all_ngrams_of_the_corpus():
    texts = ["A b a b", "b, c!"]
    # words: [a b a b], [b c]; unigrams a b a b b c -> 3 distinct of 6; bigrams ab ba ab | bc -> 3 distinct of 4
    assert diversity.distinct_n(texts, 1) == pytest.approx(3 / 6)
    assert diversity.distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert diversity.distinct_n(["one"], 2) == 0.0  # no bigram at all


def test_distinct_n_counts_korean_eojeol():
    assert diversity.distinct_n(["시를 써 주세요.", "시를 읽어 주세요."], 1) == pytest.approx(4 / 6)


def test_self_repetition_matches_the_hand_computed_score():
    texts = ["a b c d e", "a b c d x", "q r s t u"]
    # 4-grams: {abcd, bcde}, {abcd, bcdx}, {qrst, rstu}; abcd occurs in two texts, so each of the first two texts has
    # one occurrence elsewhere: (log 2 + log 2 + log 1) / 3
    assert diversity.self_repetition(texts) == pytest.approx(2 * math.log(2) / 3)
    assert diversity.self_repetition(["x y z w", "p q r s"]) == 0.0


def test_compression_ratio_is_bytes_over_gzip_bytes_and_grows_with_repetition():
    varied = [f"task {i}: {random.Random(i).random():.12f} {i * 7919 % 1000003}" for i in range(500)]
    repeated = ["Write a poem about the sea."] * 500
    data = " ".join(varied).encode()
    assert diversity.compression_ratio(varied) == pytest.approx(len(data) / len(gzip.compress(data)), rel=0.01)
    assert diversity.compression_ratio(repeated) > 10 * diversity.compression_ratio(varied)
    # Shaib et al.'s package gzips twice; on a corpus this size that changes the ratio by well under 1%.
    double = len(gzip.compress(gzip.compress(data)))
    assert diversity.compression_ratio(varied) == pytest.approx(len(data) / double, rel=0.01)
    assert diversity.compression_ratio([]) == 0.0


def test_nearest_rouge_l_is_exact_against_rouge_score():
    rng = random.Random(3)
    words = "write a short poem about the sea list three colors sort these numbers explain why sky is blue".split()
    references = [" ".join(rng.choices(words, k=rng.randint(1, 9))) for _ in range(60)]
    queries = [" ".join(rng.choices(words, k=rng.randint(1, 9))) for _ in range(40)]
    nearest = diversity.nearest_rouge_l(queries, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for i, query in enumerate(queries):
        expected = [rouge_scorer._score_lcs(tokenize_rouge(query), tokenize_rouge(r)).fmeasure for r in references]
        best = max(expected)
        assert nearest.scores[i] == best  # the same float, not just close
        assert nearest.indices[i] == expected.index(best)  # ties go to the first reference
        assert scorer.score(references[nearest.indices[i]], query)["rougeL"].fmeasure == pytest.approx(best)


def test_nearest_rouge_l_known_values_and_empty_references():
    nearest = diversity.nearest_rouge_l(["write a poem"], ["sort numbers", "write a short poem"])
    # LCS 3 of lengths 3 and 4: P = 3/4, R = 1, F = 2PR/(P+R) = 6/7
    assert nearest.scores[0] == pytest.approx(6 / 7) and nearest.indices[0] == 1
    empty = diversity.nearest_rouge_l(["write a poem"], [])
    assert empty.scores.tolist() == [0.0] and empty.indices.tolist() == [-1]


def test_nearest_other_leaves_each_text_out_and_samples_rows():
    scores, rows = diversity.nearest_other(["a b c", "a b c", "x y z"])
    assert rows == 3 and scores.tolist() == [1.0, 1.0, 0.0]
    texts = [f"word{i} common" for i in range(50)]
    scores, rows = diversity.nearest_other(texts, sample=10, seed=1)
    assert rows == 10 and len(scores) == 10
    assert all(s == pytest.approx(0.5) for s in scores)  # "common" is shared with every other text: LCS 1 of 2 and 2


def test_nearest_rouge_l_korean_uses_morphemes():
    nearest = diversity.nearest_rouge_l(["시를 써 주세요"], ["시를 써 줘"], tokenizer="ko")
    assert 0.5 < nearest.scores[0] < 1.0  # 시/를/쓰 shared; the ending differs
    assert diversity.nearest_rouge_l(["시를 써 주세요"], ["시를 써 줘"], tokenizer="rouge").scores[0] == 0.0


# ---- classification-style -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [SEEDS_DIR / "seed_tasks.jsonl", SEEDS_DIR / "seed_tasks_ko.jsonl",
                                  SHARED / "selfinstruct_seed_tasks.jsonl"], ids=lambda p: p.name if "shared" not in str(p) else "self-instruct")
def test_classification_heuristic_agrees_with_the_seed_labels(path):
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared is not beside this checkout)")
    tasks = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    predicted = [quality.is_classification_style(t["instruction"], t["instances"][0]["output"]) for t in tasks]
    gold = [t["is_classification"] for t in tasks]
    agreement = sum(p == g for p, g in zip(predicted, gold)) / len(tasks)
    recall = sum(p and g for p, g in zip(predicted, gold)) / sum(gold)
    assert agreement >= 0.9 and recall >= 0.65, (agreement, recall)


# ---- the report of a run directory ----------------------------------------------------------------------------------

def _write_run(run_dir: Path, accepted: list[dict], rejected: list[dict], meta: dict) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps(meta), encoding="utf-8")
    (run_dir / "accepted.jsonl").write_text("".join(json.dumps(r) + "\n" for r in accepted), encoding="utf-8")
    (run_dir / "rejected.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rejected), encoding="utf-8")
    return run_dir


@pytest.fixture()
def small_run(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"id": f"s{i}", "name": f"s{i}", "instruction": text, "is_classification": False,
                                         "instances": [{"input": "", "output": "x"}]}) + "\n"
                             for i, text in enumerate(["Write a short poem about the sea.", "Sort these numbers."])))
    accepted = [
        {"request_index": 0, "candidate_index": 0, "instruction": "Write a poem about the sea.", "input": "", "output": "Waves roll in.", "judge_score": 5},
        {"request_index": 0, "candidate_index": 1, "instruction": "Classify the sentiment of the review.", "input": "I loved it.", "output": "positive", "judge_score": 4},
        {"request_index": 2, "candidate_index": 0, "instruction": "Translate the sentence into French.", "input": "Good morning.", "output": "Bonjour.", "judge_score": 4},
        {"request_index": 3, "candidate_index": 0, "instruction": "Explain why the sky is blue.", "input": "", "output": "Rayleigh scattering makes blue light scatter most.", "judge_score": 3},
    ]
    rejected = [
        {"request_index": 1, "reason": "truncated", "detail": "", "finish_reason": "length"},
        {"request_index": 2, "candidate_index": 1, "instruction": "Write a poem about sea.", "input": "", "output": "x", "reason": "low_score", "judge_score": 2, "step": "judge"},
        {"request_index": 3, "candidate_index": 1, "instruction": "Hi.", "input": "", "output": "x", "reason": "too_short", "step": "filters"},
    ]
    meta = {
        "run_name": "small", "config": {"language": "en", "tasks_per_request": 2, "seeds_path": str(seeds), "seed": 1,
                                         "dedup": {"tokenizer": "rouge"}, "llm": {"model": "m"}},
        "counts": {"requests": 4, "candidates": 6, "accepted": 4,
                   "steps": {"filters": {"kept": 5, "dropped": 1}, "dedup": {"kept": 5, "dropped": 0}, "judge": {"kept": 4, "dropped": 1}}},
        "usage": {"prompt_tokens": 4000, "completion_tokens": 1000},
        "timings": {"generation_seconds": 8.0, "accepted_per_second": 0.5},
        "judge": {"requests": 5, "prompt_tokens": 900, "completion_tokens": 100},
    }
    return _write_run(tmp_path / "small", accepted, rejected, meta)


def test_report_figures_of_a_hand_made_run(small_run):
    report = quality.build_report(small_run)
    f = report["figures"]
    assert (f["requests"], f["tasks_asked"], f["parsed"], f["accepted"]) == (4, 8, 6, 4)
    assert f["parse_yield"] == 0.75 and f["truncation_rate"] == 0.25 and f["accepted_per_request"] == 1.0
    assert f["prompt_tokens_per_accepted"] == 1000 and f["completion_tokens_per_accepted"] == 250
    assert f["judge_tokens_per_accepted"] == 250
    assert f["with_input_share"] == 0.5 and f["classification_share"] == 0.25
    assert f["instruction_words_mean"] == pytest.approx((6 + 6 + 5 + 6) / 4, abs=0.05)
    assert f["input_words_mean"] == 2.5 and f["output_words_mean"] == pytest.approx((3 + 1 + 1 + 7) / 4, abs=0.05)
    assert f["judge_mean"] == 4.0
    assert report["distributions"]["judge_scores"] == {"3": 1, "4": 2, "5": 1}
    assert report["distributions"]["judge_scores_rejected"] == {"2": 1}
    assert [s["count"] for s in report["funnel"]] == [4, 8, 6, 5, 5, 4, 4]
    assert [s["stage"] for s in report["funnel"]][3:6] == ["kept by filters", "kept by dedup", "kept by judge"]
    # "Write a poem about the sea." vs seed "Write a short poem about the sea.": LCS 6 of 6 and 7 -> F = 12/13
    seed_scores = report["distributions"]["rouge_to_seed"]
    assert seed_scores["max"] == pytest.approx(12 / 13, abs=1e-4) and seed_scores["n"] == 4
    assert sum(seed_scores["histogram"]) == 4
    assert f["audit_all_valid"] is None  # no audit yet


def test_report_markdown_shows_figures_references_and_charts(small_run):
    report = quality.build_report(small_run)
    text = quality.markdown(report, {"funnel": "charts/funnel.png"})
    assert "![funnel](charts/funnel.png)" in text
    assert "| tasks parsed | 6 |" in text
    assert "| parse yield (parsed / asked) | 75.0% |" in text
    # Self-Instruct's published top-verb coverage and all-valid share stand beside the run's own figures.
    assert "14.0%" in text and "54.0%" in text
    header, rows = quality.figure_rows([report, report])
    assert header[:3] == ["figure", "small", "small"]
    assert ["records with an input", "50.0%", "50.0%", "56.5%", "40.0%"] in rows


def test_report_without_readable_seeds_says_why(small_run):
    meta = json.loads((small_run / "run.json").read_text())
    meta["config"]["seeds_path"] = str(small_run / "missing.jsonl")
    (small_run / "run.json").write_text(json.dumps(meta))
    report = quality.build_report(small_run)
    assert report["figures"]["rouge_to_seed_mean"] is None
    assert any("seed tasks not readable" in note for note in report["notes"])


def test_load_report_recomputes_when_the_run_changed(small_run):
    first = quality.load_report(small_run)
    assert (small_run / quality.QUALITY_JSON).exists() and first["figures"]["accepted"] == 4
    with (small_run / "accepted.jsonl").open("a") as f:
        f.write(json.dumps({"request_index": 4, "candidate_index": 0, "instruction": "Name three rivers in Europe.",
                            "input": "", "output": "Rhine, Danube, Seine."}) + "\n")
    import os
    os.utime(small_run / "accepted.jsonl", (os.path.getmtime(small_run / quality.QUALITY_JSON) + 5,) * 2)
    assert quality.load_report(small_run)["figures"]["accepted"] == 5


def test_report_shows_a_saved_audit_beside_self_instructs_figures(small_run):
    from pipeline.audit import AnswerCount, AuditSummary

    counts = {"valid_instruction": (3, 4), "appropriate_input": (1, 2), "correct_output": (2, 4), "all_valid": (1, 4)}
    summary = AuditSummary({c: AnswerCount(*yes_judged) for c, yes_judged in counts.items()}, 4, small_run / "sheet.csv", "now")
    (small_run / "audit.json").write_text(json.dumps(summary.to_json()), encoding="utf-8")
    report = quality.build_report(small_run)
    assert report["figures"]["audit_valid_instruction"] == 0.75 and report["figures"]["audit_all_valid"] == 0.25
    assert report["audit"]["rows"] == 4
    header, rows = quality.figure_rows([report], ["quality"])
    assert ["audit: all fields valid", "25.0%", "54.0%", "–"] in rows
    (small_run / "audit.json").write_text("{not json", encoding="utf-8")
    assert quality.build_report(small_run)["figures"]["audit_all_valid"] is None  # left out, with a warning
