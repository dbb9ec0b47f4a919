"""Benchmark: exact ROUGE-L dedup at 100K, 300K and 1M instructions, and the index rebuild of a resumed run.

The corpus is built deterministically from ``../shared/bench/instructions_55k.json`` (55,588 instruction-like
sentences): each item joins two sentences drawn with a seeded RNG, and ``--near-copy-rate`` of the items (10% by
default) are instead a copy of an earlier item with one word deleted, inserted or replaced, so near-duplicates
arrive at a known rate and the kept set keeps growing, as in a long generation run.

Figures, in one run:

* **exactness**: ``pipeline.dedup.RougeDedup``'s decisions on the first ``--reference-size`` items against the
  reference, rouge-score's tokenizer and ``rouge_scorer._score_lcs(new, kept).fmeasure`` against every kept item in
  Stanford Alpaca's order; and on the first ``--exhaustive-size`` items against the exhaustive scorer
  (``RougeDedup(top_k=1)``: every pair's LCS by rapidfuzz, rouge-score's float formula), which is itself checked
  against rouge-score by the property tests;
* **scaling**: CPU and wall seconds, kept count and peak RSS at each size, each in a fresh subprocess; the scaling
  exponent between consecutive sizes and over the whole range (``log(t2 / t1) / log(n2 / n1)``);
* **resume**: at the largest size, the time to rebuild the index from the kept texts (``add_seeds``, what a resumed
  run does through ``pipeline.chain``).

Usage: ``.venv/bin/python benchmarks/rouge_dedup_scale.py [--sizes 100000,300000,1000000] [--bench-dir DIR]``
Progress goes to stdout; the last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BENCH_DIR = REPO_ROOT.parent / "shared" / "bench"
DATA_FILE = "instructions_55k.json"
THRESHOLD = 0.7

sys.path.insert(0, str(REPO_ROOT))


def build_corpus(sentences: list[str], size: int, near_copy_rate: float = 0.1, seed: int = 0) -> list[str]:
    """``size`` items: joined sentence pairs, and at ``near_copy_rate`` one-word edits of an earlier item."""
    rng = random.Random(seed)
    items: list[str] = []
    for _ in range(size):
        if items and rng.random() < near_copy_rate:
            words = items[rng.randrange(len(items))].split()
            position = rng.randrange(len(words))
            edit = rng.randrange(3)
            if edit == 0 and len(words) > 3:
                del words[position]
            elif edit == 1:
                words.insert(position, rng.choice(sentences[rng.randrange(len(sentences))].split() or ["the"]))
            else:
                words[position] = rng.choice(sentences[rng.randrange(len(sentences))].split() or ["the"])
            items.append(" ".join(words))
        else:
            items.append(sentences[rng.randrange(len(sentences))] + " " + sentences[rng.randrange(len(sentences))])
    return items


def worker(data_path: Path, size: int, near_copy_rate: float, resume: bool) -> None:
    """Subprocess entry: dedup ``size`` items once; print CPU, wall, kept, peak RSS (and the rebuild time)."""
    from pipeline.dedup import RougeDedup

    texts = build_corpus(json.loads(data_path.read_text(encoding="utf-8")), size, near_copy_rate)
    dedup = RougeDedup(threshold=THRESHOLD)
    cpu, wall = time.process_time(), time.perf_counter()
    kept = 0
    for done, text in enumerate(texts, 1):
        kept += dedup.add(text).kept
        if done % 100_000 == 0:
            print(f"    {done:,}: kept {kept:,}, {time.perf_counter() - wall:.0f} s", file=sys.stderr, flush=True)
    figures: dict[str, Any] = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall, "kept": kept}
    if resume:
        kept_texts = list(dedup.texts)
        del dedup
        started = time.perf_counter()
        rebuilt = RougeDedup(threshold=THRESHOLD)
        rebuilt.add_seeds(kept_texts)
        figures["resume_rebuild_s"] = time.perf_counter() - started
    figures["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(figures))


def run_worker(data_path: Path, size: int, near_copy_rate: float, resume: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker-size", str(size), "--bench-dir", str(data_path.parent),
               "--near-copy-rate", str(near_copy_rate)] + (["--resume"] if resume else [])
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def check_exactness(texts: list[str], reference_size: int, exhaustive_size: int) -> dict[str, Any]:
    from rouge_score import rouge_scorer

    from pipeline.dedup import RougeDedup

    print(f"exactness: rouge-score on the first {reference_size:,} items ...", flush=True)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    kept_tokens: list[list[str]] = []
    reference = []
    for text in texts[:reference_size]:
        tokens = scorer._tokenizer.tokenize(text)
        keep = all(rouge_scorer._score_lcs(tokens, old).fmeasure <= THRESHOLD for old in kept_tokens)
        if keep:
            kept_tokens.append(tokens)
        reference.append(keep)
    ours = [decision.kept for decision in RougeDedup(threshold=THRESHOLD).add_many(texts[:reference_size])]
    print(f"exactness: the exhaustive scorer on the first {exhaustive_size:,} items ...", flush=True)
    exhaustive = [decision.kept for decision in RougeDedup(threshold=THRESHOLD, top_k=1).add_many(texts[:exhaustive_size])]
    ours_long = [decision.kept for decision in RougeDedup(threshold=THRESHOLD).add_many(texts[:exhaustive_size])]
    return {
        "reference_size": reference_size,
        "identical_to_rouge_score": ours == reference,
        "reference_kept": sum(reference),
        "exhaustive_size": exhaustive_size,
        "identical_to_exhaustive": ours_long == exhaustive,
        "exhaustive_kept": sum(exhaustive),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench-dir", type=Path, default=DEFAULT_BENCH_DIR, help="folder holding " + DATA_FILE)
    parser.add_argument("--sizes", default="100000,300000,1000000", help="comma-separated corpus sizes")
    parser.add_argument("--near-copy-rate", type=float, default=0.1, help="share of items that edit an earlier one")
    parser.add_argument("--reference-size", type=int, default=1500, help="items checked against rouge-score itself")
    parser.add_argument("--exhaustive-size", type=int, default=20000, help="items checked against every-pair scoring")
    parser.add_argument("--worker-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    data_path = args.bench_dir / DATA_FILE
    if not data_path.is_file():
        print(f"benchmark data not found: {data_path} (pass --bench-dir)", file=sys.stderr)
        return 2
    if args.worker_size is not None:
        worker(data_path, args.worker_size, args.near_copy_rate, args.resume)
        return 0
    sizes = sorted(int(size) for size in args.sizes.split(","))
    sentences = json.loads(data_path.read_text(encoding="utf-8"))
    figures: dict[str, Any] = {"threshold": THRESHOLD, "near_copy_rate": args.near_copy_rate}
    figures |= check_exactness(build_corpus(sentences, max(args.reference_size, args.exhaustive_size), args.near_copy_rate),
                               args.reference_size, args.exhaustive_size)
    print(json.dumps(figures), flush=True)
    runs = {}
    for size in sizes:
        print(f"dedup of {size:,} items (fresh subprocess) ...", flush=True)
        runs[size] = run_worker(data_path, size, args.near_copy_rate, resume=size == sizes[-1])
        print(f"  {runs[size]['cpu_s']:.1f} s CPU, {runs[size]['wall_s']:.1f} s wall, kept {runs[size]['kept']:,}, "
              f"peak RSS {runs[size]['peak_rss_mib']:.0f} MiB", flush=True)
        figures[f"{size}"] = {key: round(value, 2) if isinstance(value, float) else value for key, value in runs[size].items()}
    for small, large in zip(sizes, sizes[1:]):
        figures[f"exponent_{small}_{large}"] = round(
            math.log(runs[large]["cpu_s"] / runs[small]["cpu_s"]) / math.log(large / small), 2)
    if len(sizes) > 2:
        figures["exponent_overall"] = round(
            math.log(runs[sizes[-1]]["cpu_s"] / runs[sizes[0]]["cpu_s"]) / math.log(sizes[-1] / sizes[0]), 2)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
