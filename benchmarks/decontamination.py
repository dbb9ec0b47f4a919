"""Benchmark: pipeline.decontaminate's hashed n-gram index against a naive scan of every eval item.

Reads ``../shared/bench/instructions_55k.json`` (55,588 English instruction-like sentences) and builds, in one run:

* 100,000 eval items: the 55,588 sentences, plus 44,412 pairs of sentences joined (a benchmark item is often an
  instruction and its input), written to a temporary JSONL file and indexed through :func:`build_index`, as a run
  does (reading the file included);
* 10,000 candidates: 5,000 of random corpus words (unrelated), 4,000 eval items with their words shuffled (same
  vocabulary and lengths, no shared run), and 1,000 eval items of 8 tokens or more, lightly edited and wrapped in
  other text (planted: all must be found, and nothing else should be).

Figures, each against a baseline measured in the same run:

* indexing seconds against tokenizing the same 100,000 texts (``tokenize_unicode``), the floor of any n-gram method;
* checking seconds against the same floor for the 10,000 candidates, and against a naive scan, which tests each
  candidate's windows against every eval item's n-gram set (``set.isdisjoint``), timed on the first
  ``--naive-sample`` candidates and extrapolated; the two must agree on every sampled candidate.

Times are CPU seconds (``time.process_time``), best of ``--repeats``, because the machine is shared; wall seconds
are reported alongside. Progress goes to stdout; the last line is one JSON object with every figure.

Usage: ``.venv/bin/python benchmarks/decontamination.py [--bench-dir DIR] [--repeats 3] [--naive-sample 200]``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BENCH_DIR = REPO_ROOT.parent / "shared" / "bench"
DATA_FILE = "instructions_55k.json"
EVAL_ITEMS = 100_000
UNRELATED, SHUFFLED, PLANTED = 5_000, 4_000, 1_000
NGRAM = 13

sys.path.insert(0, str(REPO_ROOT))


def timed(function: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    """(result, CPU seconds, wall seconds)."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = function(*args)
    return result, time.process_time() - cpu, time.perf_counter() - wall


def best_of(repeats: int, function: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    runs = [timed(function, *args) for _ in range(repeats)]
    return min(runs, key=lambda run: run[1])


def make_eval_items(sentences: list[str], rng: random.Random) -> list[str]:
    pairs = EVAL_ITEMS - len(sentences)
    firsts = rng.sample(range(len(sentences)), pairs)
    return sentences + [f"{sentences[i]} {sentences[(i * 7919 + 1) % len(sentences)]}" for i in firsts]


def _edit(text: str, kind: int) -> str:
    if kind == 0:
        return text.lower()
    if kind == 1:
        return text.replace(" ", "  ").rstrip(".?!") + "?!"
    if kind == 2:
        return text.upper() + " Please be brief."
    return text.replace(",", ";").replace(" ", "\n", 2)


def make_candidates(items: list[str], rng: random.Random) -> tuple[list[str], list[int]]:
    """The candidates, and the positions of the planted ones."""
    from pipeline.text import tokenize_unicode

    # Words are tokens, not whitespace-split strings: a URL in the corpus is one "word" but a dozen tokens, and
    # would carry a real 13-gram into an "unrelated" candidate.
    vocabulary = sorted({word for text in items[:20_000] for word in tokenize_unicode(text)})
    unrelated = [" ".join(rng.choices(vocabulary, k=rng.randint(15, 60))) for _ in range(UNRELATED)]
    shuffled = []
    for text in rng.sample(items, SHUFFLED):
        words = tokenize_unicode(text)
        rng.shuffle(words)
        shuffled.append(" ".join(words))
    long_enough = [text for text in items if len(tokenize_unicode(text)) >= 8]
    planted = [f"Here is a task for you. {_edit(text, number % 4)} Answer carefully."
               for number, text in enumerate(rng.sample(long_enough, PLANTED))]
    candidates = unrelated + shuffled + planted
    order = list(range(len(candidates)))
    rng.shuffle(order)
    planted_at = sorted(order.index(i) for i in range(UNRELATED + SHUFFLED, len(candidates)))
    return [candidates[i] for i in order], planted_at


def index_file(path: Path):
    from pipeline.config import EvalSetConfig
    from pipeline.decontaminate import build_index

    return build_index([EvalSetConfig(name="bench-100k", path=str(path), text_fields=["instruction"])], NGRAM, NGRAM)


def check_all(index, candidates: list[str]) -> list[bool]:
    return [index.find(text) is not None for text in candidates]


def tokenize_all(texts: list[str]) -> int:
    from pipeline.text import tokenize_unicode

    return sum(len(tokenize_unicode(text)) for text in texts)


def naive_item_sets(items: list[str], min_tokens: int) -> list[set[tuple[str, ...]]]:
    from pipeline.text import tokenize_unicode

    sets = []
    for text in items:
        tokens = tuple(tokenize_unicode(text))
        if len(tokens) < min_tokens:
            continue
        if len(tokens) < NGRAM:
            sets.append({tokens})
        else:
            sets.append({tokens[i : i + NGRAM] for i in range(len(tokens) - NGRAM + 1)})
    return sets


def naive_check(item_sets: list[set[tuple[str, ...]]], candidates: list[str], min_tokens: int) -> list[bool]:
    """Every candidate against every item: its windows of every length an item can match, disjoint or not."""
    from pipeline.text import tokenize_unicode

    decisions = []
    for text in candidates:
        tokens = tuple(tokenize_unicode(text))
        windows = {tokens[i : i + length] for length in range(min_tokens, NGRAM + 1) for i in range(len(tokens) - length + 1)}
        decisions.append(any(not windows.isdisjoint(item) for item in item_sets))
    return decisions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench-dir", type=Path, default=DEFAULT_BENCH_DIR, help="folder holding " + DATA_FILE)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each of our measurements; the best counts")
    parser.add_argument("--naive-sample", type=int, default=200, help="candidates the naive scan is timed on")
    args = parser.parse_args(argv)
    data_path = args.bench_dir / DATA_FILE
    if not data_path.is_file():
        print(f"benchmark data not found: {data_path} (../shared is absent here; pass --bench-dir)", file=sys.stderr)
        return 2

    from pipeline.decontaminate import MIN_WHOLE_MATCH_TOKENS
    from pipeline.text import tokenize_unicode

    rng = random.Random(0)
    items = make_eval_items(json.loads(data_path.read_text(encoding="utf-8")), rng)
    candidates, planted_at = make_candidates(items, rng)
    tokenize_unicode("warm up")
    figures: dict[str, Any] = {"eval_items": len(items), "candidates": len(candidates), "planted": len(planted_at),
                               "ngram": NGRAM, "clock": f"CPU seconds, best of {args.repeats}"}

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "eval.jsonl"
        path.write_text("".join(json.dumps({"instruction": text}) + "\n" for text in items), encoding="utf-8")
        print(f"indexing {len(items):,} eval items from JSONL ...", flush=True)
        index, index_cpu, index_wall = best_of(args.repeats, index_file, path)
    _, floor_index_cpu, _ = best_of(args.repeats, tokenize_all, items)
    print(f"  {index_cpu:.2f} s CPU ({index_wall:.2f} s wall), {index.ngram_count:,} n-grams; "
          f"tokenizing alone {floor_index_cpu:.2f} s", flush=True)

    print(f"checking {len(candidates):,} candidates ...", flush=True)
    decisions, check_cpu, check_wall = best_of(args.repeats, check_all, index, candidates)
    _, floor_check_cpu, _ = best_of(args.repeats, tokenize_all, candidates)
    found = sum(decisions[i] for i in planted_at)
    false_positives = sum(decisions) - found
    print(f"  {check_cpu:.2f} s CPU ({check_wall:.2f} s wall), {len(candidates) / check_cpu:,.0f} candidates/s; "
          f"planted found {found}/{len(planted_at)}, others dropped {false_positives}; tokenizing alone {floor_check_cpu:.2f} s",
          flush=True)

    sample = candidates[: args.naive_sample]
    print(f"naive scan: {len(sample)} candidates x {len(items):,} items ...", flush=True)
    item_sets, sets_cpu, _ = timed(naive_item_sets, items, min(MIN_WHOLE_MATCH_TOKENS, NGRAM))
    naive, naive_cpu, naive_wall = timed(naive_check, item_sets, sample, min(MIN_WHOLE_MATCH_TOKENS, NGRAM))
    ours_on_sample, ours_sample_cpu, _ = best_of(args.repeats, check_all, index, sample)
    naive_extrapolated = naive_cpu * len(candidates) / len(sample)
    print(f"  {naive_cpu:.2f} s CPU on {len(sample)} (sets built in {sets_cpu:.2f} s), "
          f"extrapolated to {len(candidates):,}: {naive_extrapolated:.0f} s", flush=True)

    figures |= {
        "index_cpu_s": round(index_cpu, 3),
        "index_wall_s": round(index_wall, 3),
        "ngrams_indexed": index.ngram_count,
        "items_indexed": index.items,
        "items_matched_whole": index.whole_items,
        "items_too_short": index.skipped_short,
        "index_items_per_s": round(len(items) / index_cpu),
        "tokenize_eval_cpu_s": round(floor_index_cpu, 3),
        "index_over_tokenize": round(index_cpu / floor_index_cpu, 2),
        "check_cpu_s": round(check_cpu, 3),
        "check_wall_s": round(check_wall, 3),
        "check_candidates_per_s": round(len(candidates) / check_cpu),
        "tokenize_candidates_cpu_s": round(floor_check_cpu, 3),
        "check_over_tokenize": round(check_cpu / floor_check_cpu, 2),
        "planted_found": found,
        "others_dropped": false_positives,
        "naive_sample": len(sample),
        "naive_sample_cpu_s": round(naive_cpu, 3),
        "naive_sample_wall_s": round(naive_wall, 3),
        "naive_10k_extrapolated_cpu_s": round(naive_extrapolated, 1),
        "ours_sample_cpu_s": round(ours_sample_cpu, 4),
        "speedup_vs_naive": round(naive_cpu / ours_sample_cpu, 1),
        "identical_decisions_sample": naive == ours_on_sample,
    }
    print(json.dumps(figures))
    return 0 if found == len(planted_at) and naive == ours_on_sample else 1  # a wrong answer is no benchmark


if __name__ == "__main__":
    sys.exit(main())
