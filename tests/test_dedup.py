"""RougeDedup must make exactly Alpaca's keep/reject decisions (rouge-score's tokenizer, LCS and float F-measure)."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer, scoring, tokenizers

from pipeline.dedup import Decision, RougeDedup, ids_to_code, dedup_file, load_instructions
from pipeline.rouge import rouge_l_best, rouge_l_fmeasure, rouge_l_fmeasure_array
from pipeline.text import tokenize_rouge

BENCH_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "bench"
WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta"]
ROUGE_TOKENIZER = tokenizers.DefaultTokenizer(use_stemmer=False)
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def alpaca_reference(texts: list[str], threshold: float, seeds: list[str] = ()) -> list[tuple[bool, list[float]]]:
    """Stanford Alpaca's filter: rouge-score on every (new, indexed) pair; keep iff no score exceeds threshold.

    Returns, per text, the decision and its scores against the items indexed at that moment.
    """
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    indexed = [scorer._tokenizer.tokenize(seed) for seed in seeds]
    results = []
    for text in texts:
        new_tokens = scorer._tokenizer.tokenize(text)
        scores = [rouge_scorer._score_lcs(new_tokens, old_tokens).fmeasure for old_tokens in indexed]
        keep = max(scores, default=0.0) <= threshold
        results.append((keep, scores))
        if keep:
            indexed.append(new_tokens)
    return results


def rouge_f(lcs: int, target_len: int, prediction_len: int) -> float:
    """rouge-score's own F-measure for given counts, through its own functions."""
    if target_len == 0 or prediction_len == 0:
        return 0.0
    return scoring.fmeasure(lcs / prediction_len, lcs / target_len)


# A few exactly achievable F values, so that some pairs land exactly on the threshold.
ACHIEVABLE_SCORES = sorted(
    {rouge_f(lcs, n, m) for n in range(1, 9) for m in range(1, 9) for lcs in range(1, min(m, n) + 1)}
)
THRESHOLDS = st.one_of(st.sampled_from([0.7, 0.5, 0.3, 0.9, 1.0]), st.sampled_from(ACHIEVABLE_SCORES))


@st.composite
def word_lists(draw: st.DrawFn, words: list[str], max_size: int = 60) -> list[str]:
    return draw(st.lists(st.sampled_from(words), max_size=max_size))


@st.composite
def corpora(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """(seeds, texts): small vocabularies and mutated copies, so that many pairs sit near the threshold."""
    words = WORDS[: draw(st.integers(2, len(WORDS)))]
    max_size = draw(st.sampled_from([8, 20, 60]))
    bases = draw(st.lists(word_lists(words, max_size), min_size=1, max_size=4))
    items = []
    for _ in range(draw(st.integers(1, 25))):
        if draw(st.booleans()):
            items.append(draw(word_lists(words, max_size)))
        else:
            items.append(_mutate(draw, list(draw(st.sampled_from(bases))), words))
    separator = draw(st.sampled_from([" ", ", ", " -- "]))
    texts = [separator.join(item) for item in items]
    seed_count = draw(st.integers(0, min(3, len(texts))))
    return texts[:seed_count], texts[seed_count:]


def _mutate(draw: st.DrawFn, tokens: list[str], words: list[str]) -> list[str]:
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(tokens)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        if action == "insert" or not tokens:
            tokens.insert(position, draw(st.sampled_from(words)))
        elif action == "delete":
            del tokens[min(position, len(tokens) - 1)]
        else:
            tokens[min(position, len(tokens) - 1)] = draw(st.sampled_from(words))
    return tokens


def assert_matches_reference(dedup: RougeDedup, seeds: list[str], texts: list[str], threshold: float,
                             reference_filter=alpaca_reference) -> list[tuple[Decision, list[float]]]:
    """``dedup`` (seeded with ``seeds``) decides ``texts`` as ``reference_filter`` does; returns (decision, scores)."""
    decisions = dedup.add_many(texts)
    reference = reference_filter(texts, threshold, seeds)
    assert [d.kept for d in decisions] == [keep for keep, _ in reference]
    for decision, (keep, scores) in zip(decisions, reference):
        if keep:
            assert decision.similar_to is None
            assert decision.score <= max(scores, default=0.0)  # a lower bound on the best score
        else:
            assert decision.score == scores[decision.similar_to] > threshold
    assert len(dedup) == len(seeds) + sum(d.kept for d in decisions)
    return [(decision, scores) for decision, (_, scores) in zip(decisions, reference)]


# -- exactness ------------------------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(corpus=corpora(), threshold=THRESHOLDS)
def test_decisions_equal_alpaca_reference(corpus: tuple[list[str], list[str]], threshold: float) -> None:
    seeds, texts = corpus
    dedup = RougeDedup(threshold=threshold)
    dedup.add_seeds(seeds)
    assert_matches_reference(dedup, seeds, texts, threshold)


@PROPERTY_SETTINGS
@given(corpus=corpora(), threshold=THRESHOLDS, top_k=st.integers(1, 6))
def test_top_k_equals_brute_force(corpus: tuple[list[str], list[str]], threshold: float, top_k: int) -> None:
    seeds, texts = corpus
    dedup = RougeDedup(threshold=threshold, top_k=top_k)
    dedup.add_seeds(seeds)
    decisions = dedup.add_many(texts)
    reference = alpaca_reference(texts, threshold, seeds)
    assert [d.kept for d in decisions] == [keep for keep, _ in reference]
    for decision, (_, scores) in zip(decisions, reference):
        expected = sorted(enumerate(scores), key=lambda pair: (-pair[1], pair[0]))[:top_k]
        assert decision.most_similar == expected
        assert decision.score == max(scores, default=0.0)  # exact when every item is scored
        if not decision.kept:
            assert scores[decision.similar_to] == decision.score > threshold


MANY_WORDS = [f"w{i}" for i in range(40)]


@st.composite
def long_corpora(draw: st.DrawFn) -> list[str]:
    """Longer texts over a wider vocabulary, half of them edited copies: prefixes are then a real part of a text."""
    bases = draw(st.lists(st.lists(st.sampled_from(MANY_WORDS), min_size=4, max_size=40), min_size=1, max_size=6))
    items = []
    for _ in range(draw(st.integers(20, 60))):
        if draw(st.booleans()):
            items.append(draw(st.lists(st.sampled_from(MANY_WORDS), max_size=40)))
        else:
            items.append(_mutate(draw, list(draw(st.sampled_from(bases))), MANY_WORDS))
    return [" ".join(item) for item in items]


@PROPERTY_SETTINGS
@given(texts=long_corpora(), threshold=st.sampled_from([0.7, 0.5, 0.85]), seeds=st.integers(0, 5))
def test_postings_and_reorders_keep_decisions_exact(texts: list[str], threshold: float, seeds: int,
                                                     monkeypatch_module) -> None:
    """With the index re-ordered at 8, 16, 32, ... items and its tail merged every few, every path of the index is
    taken on a small corpus."""
    dedup = RougeDedup(threshold=threshold)
    dedup.add_seeds(texts[:seeds])
    assert_matches_reference(dedup, texts[:seeds], texts[seeds:], threshold)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pipeline.dedup._FIRST_REORDER", 8)
        patch.setattr("pipeline.postings._MIN_TAIL", 3)
        yield patch


def test_thousands_of_near_copies_decide_as_scoring_every_pair() -> None:
    """At the default settings (past the first re-order), decisions equal the exhaustive scorer's."""
    rng = np.random.default_rng(7)
    vocabulary = [f"t{i}" for i in range(300)]
    items: list[list[str]] = []
    for _ in range(3000):
        if items and rng.random() < 0.4:
            tokens = list(items[int(rng.integers(len(items)))])
            for _ in range(int(rng.integers(1, 5))):
                position = int(rng.integers(len(tokens)))
                tokens[position] = vocabulary[int(rng.zipf(1.3)) % len(vocabulary)]
        else:
            tokens = [vocabulary[int(rng.zipf(1.3)) % len(vocabulary)] for _ in range(int(rng.integers(6, 30)))]
        items.append(tokens)
    texts = [" ".join(tokens) for tokens in items]
    exhaustive = [d.kept for d in RougeDedup(top_k=1).add_many(texts)]
    assert 0.2 < sum(exhaustive) / len(texts) < 0.9  # both kinds of decision are exercised
    assert [d.kept for d in RougeDedup().add_many(texts)] == exhaustive


def test_add_one_by_one_equals_add_many() -> None:
    texts = ["alpha beta gamma delta", "alpha beta gamma", "delta gamma beta alpha", "alpha beta gamma delta eps"]
    for top_k in (0, 2):
        one_by_one = RougeDedup(top_k=top_k)
        batched = RougeDedup(top_k=top_k)
        assert [one_by_one.add(text) for text in texts] == batched.add_many(texts)


def test_ties_exactly_at_the_threshold_are_kept() -> None:
    # 7 of 10 tokens in common, both of length 10: F = 0.7 exactly, and Alpaca rejects only above 0.7.
    kept = "a0 a1 a2 a3 a4 a5 a6 a7 a8 a9"
    new = "a0 a1 a2 a3 a4 a5 a6 b7 b8 b9"
    score = rouge_f(7, 10, 10)
    assert RougeDedup(threshold=score).add_many([kept, new])[1].kept
    below = math.nextafter(score, 0.0)
    decision = RougeDedup(threshold=below).add_many([kept, new])[1]
    assert not decision.kept and decision.score == score and decision.similar_to == 0


def test_float_rounding_of_equal_ratios_follows_rouge_score() -> None:
    """Two (lcs, n, m) with the same exact ratio whose float F-measures differ: each must fall as rouge-score says."""
    lower, higher = _triples_with_same_ratio_but_different_floats()
    threshold = rouge_f(*lower)
    assert rouge_f(*higher) > threshold
    for lcs, n, m in (lower, higher):
        kept_text = " ".join([f"c{i}" for i in range(lcs)] + [f"o{i}" for i in range(m - lcs)])
        new_text = " ".join([f"c{i}" for i in range(lcs)] + [f"x{i}" for i in range(n - lcs)])
        decision = RougeDedup(threshold=threshold).add_many([kept_text, new_text])[1]
        reference_keep = alpaca_reference([kept_text, new_text], threshold)[1][0]
        assert decision.kept == reference_keep == ((lcs, n, m) == lower)


def _triples_with_same_ratio_but_different_floats() -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    by_ratio: dict[Fraction, tuple[int, int, int]] = {}
    for n in range(1, 40):
        for m in range(1, 40):
            for lcs in range(1, min(m, n) + 1):
                ratio = Fraction(2 * lcs, m + n)
                other = by_ratio.setdefault(ratio, (lcs, n, m))
                if rouge_f(*other) != rouge_f(lcs, n, m):
                    return tuple(sorted([other, (lcs, n, m)], key=lambda triple: rouge_f(*triple)))
    raise AssertionError("no such pair below length 40")


def test_score_helpers_equal_rouge_score() -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):
        n, m = (int(x) for x in rng.integers(0, 80, size=2))
        lcs = int(rng.integers(0, min(m, n) + 1))
        assert rouge_l_fmeasure(lcs, n, m) == rouge_f(lcs, n, m)
    lcs = np.array([0, 1, 3, 5, 7, 0])
    lengths = np.array([4, 9, 3, 8, 10, 0])
    expected = [rouge_f(int(c), 7, int(m)) for c, m in zip(lcs, lengths)]
    assert rouge_l_fmeasure_array(lcs, 7, lengths).tolist() == expected
    assert rouge_l_fmeasure_array(lcs, 0, lengths).tolist() == [0.0] * len(lcs)
    # The compiled best-of: the first maximum, score for score rouge-score's, on pairs rich in near-ties.
    for _ in range(300):
        n = int(rng.integers(0, 40))
        lengths = rng.integers(0, 40, size=int(rng.integers(1, 60)))
        lcs = np.array([int(rng.integers(0, min(int(m), n) + 1)) for m in lengths], dtype=np.int32)
        scores = [rouge_f(int(c), n, int(m)) for c, m in zip(lcs, lengths)]
        assert rouge_l_best(lcs, n, lengths) == (scores.index(max(scores)), max(scores))


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=80) | st.text(alphabet="aZ09 .,'-\n\tİKﬁ²é", max_size=80))
def test_rouge_tokenizer_is_rouge_scores(text: str) -> None:
    assert tokenize_rouge(text) == ROUGE_TOKENIZER.tokenize(text)


def test_token_codes_skip_surrogates_and_stay_distinct() -> None:
    ids = [0, 0xD7FF, 0xD800, 0xD801, 0xE000, 0x10FFFF - 0x800]
    code = ids_to_code(ids, vocab_size=0x10FFFF - 0x800 + 1)
    assert len(set(code)) == len(ids)
    assert not any(0xD800 <= ord(char) <= 0xDFFF for char in code)
    with pytest.raises(OverflowError):
        ids_to_code([0], vocab_size=0x110000)


# -- API behaviour --------------------------------------------------------------------------------------------------


def test_seeds_are_always_kept_and_indexed() -> None:
    dedup = RougeDedup()
    dedup.add_seeds(["Write a poem about the sea.", "Write a poem about the sea."])
    assert len(dedup) == 2
    decision = dedup.add("Write a poem about the sea!")
    assert decision == Decision(kept=False, score=1.0, similar_to=decision.similar_to)
    assert dedup.texts[decision.similar_to] == "Write a poem about the sea."
    assert dedup.add("List three prime numbers.").kept
    assert list(dedup.texts)[-1] == "List three prime numbers." and len(dedup) == 3


def test_empty_and_token_less_texts_are_kept_with_score_zero() -> None:
    dedup = RougeDedup()
    assert dedup.add_many(["", "!!!", "?"]) == [Decision(kept=True, score=0.0)] * 3
    assert len(dedup) == 3


def test_threshold_one_keeps_even_exact_copies() -> None:
    assert all(d.kept for d in RougeDedup(threshold=1.0).add_many(["same text"] * 3))


@pytest.mark.parametrize("kwargs", [{"threshold": 0.0}, {"threshold": 1.5}, {"top_k": -1}, {"tokenizer": "nltk"}])
def test_invalid_arguments_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RougeDedup(**kwargs)


def test_decision_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Decision(kept=True, score=0.0).kept = False  # type: ignore[misc]


# -- dedup_file -----------------------------------------------------------------------------------------------------

INSTRUCTIONS = [
    "Write a short poem about autumn leaves.",
    "Write a short poem about the autumn leaves.",
    "Explain how a hash table works.",
    "Give me three tips for better sleep.",
]


def test_dedup_file_json_array(tmp_path: Path) -> None:
    source, output = tmp_path / "in.json", tmp_path / "out" / "dedup.jsonl"
    source.write_text(json.dumps(INSTRUCTIONS, indent=2), encoding="utf-8")
    summary = dedup_file(source, output)
    records = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert [r["kept"] for r in records] == [True, False, True, True]
    assert records[1]["similar_to"] == 0 and records[1]["score"] > 0.7
    assert records[0] == {"index": 0, "kept": True, "score": 0.0, "similar_to": None}
    assert summary | {"seconds": 0} == {
        "input": str(source),
        "output": str(output),
        "seeds": 0,
        "total": 4,
        "kept": 3,
        "rejected": 1,
        "threshold": 0.7,
        "tokenizer": "rouge",
        "seconds": 0,
    }


def test_dedup_file_jsonl_with_seeds(tmp_path: Path) -> None:
    source, seeds, output = tmp_path / "in.jsonl", tmp_path / "seeds.jsonl", tmp_path / "out.jsonl"
    source.write_text("\n".join(json.dumps({"instruction": text, "id": i}) for i, text in enumerate(INSTRUCTIONS)))
    seeds.write_text(json.dumps({"id": "seed_task_0", "instruction": "Explain how a hash table works!"}) + "\n\n")
    summary = dedup_file(source, output, seeds_path=seeds)
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["kept"] for r in records] == [True, False, False, True]
    assert records[2]["similar_to"] == 0  # the seed
    assert (summary["seeds"], summary["kept"], summary["rejected"]) == (1, 2, 2)


def test_dedup_file_without_output_only_counts(tmp_path: Path) -> None:
    source = tmp_path / "in.json"
    source.write_text(json.dumps(INSTRUCTIONS))
    assert dedup_file(source, None, threshold=0.99)["kept"] == 4


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"instruction": "ok"}\n{"instruction": "broken"\n', "in.txt:2: json: invalid JSON"),
        ('{"instruction": "ok"}\n\n{"text": "no instruction"}\n', "in.txt:3: instruction: expected a string or an object"),
        ('["fine",\n  "also fine",\n  42\n]', "in.txt:3: [2].instruction: expected a string or an object with a string 'instruction', got int"),
        ('[\n"fine",\n"unterminated\n]', "in.txt:3: json: invalid JSON"),
        ('["a", "b"] trailing', "in.txt:1: json: invalid JSON: extra data"),
        ('["a" "b"]', "in.txt:1: json: invalid JSON: expected ',' or ']'"),
        ('["a",', "in.txt:1: json: invalid JSON"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "in.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_instructions(path)


def test_load_instructions_accepts_empty_array_and_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("  [ ]  \n")
    (tmp_path / "b.jsonl").write_text('\n{"instruction": "x"}\n\n')
    assert load_instructions(tmp_path / "a.json") == []
    assert load_instructions(tmp_path / "b.jsonl") == ["x"]


# -- real data ------------------------------------------------------------------------------------------------------


def test_bench_data_first_300_match_reference() -> None:
    data_path = BENCH_DIR / "instructions_55k.json"
    if not data_path.is_file():
        pytest.skip(f"{data_path} not present")
    texts = json.loads(data_path.read_text(encoding="utf-8"))[:300]
    assert_matches_reference(RougeDedup(), [], texts, 0.7)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
def test_records_written_by_the_run_store_with_raw_line_separators_are_read_back(tmp_path: Path, separator: str) -> None:
    """RunStore writes UTF-8 JSON (ensure_ascii=False), so a model's U+2028 stays raw inside the string."""
    from pipeline.store import RunStore
    from pipeline.train.data import load_records

    instruction = f"Split this{separator}sentence in two."
    with RunStore(tmp_path / "run") as store:
        store.append([{"instruction": instruction, "input": "", "output": f"Done{separator}here."},
                      {"instruction": "A second task follows.", "input": "", "output": "ok"}], [])
    accepted = tmp_path / "run" / "accepted.jsonl"
    assert separator in accepted.read_text(encoding="utf-8")
    assert load_instructions(accepted) == [instruction, "A second task follows."]
    assert [r["instruction"] for r in load_records(accepted)] == [instruction, "A second task follows."]
