"""Decontamination: drop candidates that share a long n-gram with an evaluation set.

A model trained on a benchmark's own prompts scores well on that benchmark for the wrong reason, and a
self-instruct run can produce such prompts: the generator may have memorised them, or a seed may paraphrase one.
This step drops every candidate that contains a long enough run of an evaluation item's text.

The convention is GPT-3's (Brown et al. 2020, appendix C) as implemented by NeMo Curator's task decontamination:

- Text is normalised so that edits which do not change the words do not hide a copy: English is lowercased and
  split into ``\\w+`` runs (NFKC first, :func:`pipeline.text.tokenize_unicode`), so casing, punctuation, spacing and
  line breaks are ignored. Korean is split into Kiwi morphemes (:func:`pipeline.text.tokenize_korean`): a Korean
  word glues particles and endings to its stem, so changing one particle changes a whole word, but only one morpheme.
  Each eval item and each candidate is Korean when its text contains Hangul. A Korean candidate is also checked
  word by word, because Kiwi splits numbers and abbreviations differently from ``\\w+``, and an English passage
  quoted in a Korean instruction must still be found.
- A candidate is contaminated when it shares one n-gram with an eval item: n = ``ngram`` words (13, as GPT-3 and
  NeMo Curator) or ``ngram_ko`` morphemes. A 13-gram almost never recurs by chance, yet survives the light edits a
  paraphrasing generator makes (any unedited run of 13 words is enough).
- Short items: an eval item with fewer than n tokens has no n-gram, so, as in NeMo Curator, its whole token sequence
  is the n-gram: it must appear contiguously in the candidate. Items shorter than
  :data:`MIN_WHOLE_MATCH_TOKENS` (8, GPT-3's and NeMo Curator's minimum) are not matched at all: a three-word
  item such as "Write a poem." would otherwise drop every candidate that contains the phrase. They are counted and
  logged.
- What is matched: on the eval side, the ``text_fields`` of each item joined with a space (for Self-Instruct's
  user-oriented tasks, the instruction and the first instance's input); on the candidate side, the configured
  ``fields`` of the record (instruction and input by default) joined with a space. Outputs are not checked by
  default: a benchmark's prompts are what a model must not have seen, and its reference outputs are rarely
  reproduced word for word.

The index maps a 64-bit hash of every n-gram (Python's ``hash`` of the token tuple: these indices live in one
process) to the first eval item holding it, so indexing is linear in the eval sets' size and a check costs one
dictionary lookup per window of the candidate, whatever the number of eval items. A candidate is checked with
windows of n tokens and of each distinct short-item length.

Adding a benchmark: write it as JSON (an array of objects), JSON lines, parquet or a Hugging Face dataset
directory (``save_to_disk``), then list it under ``decontamination.eval_sets`` with the fields to match. For a
benchmark on the Hugging Face hub, export it once on a machine with hub access (runs need no network), e.g.
AlpacaEval, whose hub repository holds a loading script that current ``datasets`` no longer runs, from its JSON file::

    import datasets
    datasets.load_dataset("json", data_files="hf://datasets/tatsu-lab/alpaca_eval/alpaca_eval.json",
                          split="train").to_json("alpaca_eval.jsonl")

and configure::

    decontamination:
      eval_sets:
        - name: alpaca-eval
          path: benchmarks/data/alpaca_eval.jsonl
          text_fields: [instruction]
        - name: self-instruct-user-oriented
          path: ../shared/bench/selfinstruct_user_oriented_instructions.jsonl
          text_fields: [instruction, instances.input]
          id_field: id
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from pipeline.config import DecontaminationConfig, EvalSetConfig
from pipeline.curation import Step
from pipeline.files import InputFileError, read_json_values
from pipeline.records import Drop, Record
from pipeline.text import HANGUL_RE, tokenize_korean, tokenize_unicode

log = logging.getLogger(__name__)

#: Eval items with fewer tokens than this are not matched: GPT-3 found spurious collisions below 8 words, and
#: NeMo Curator's ``min_ngram_size`` defaults to 8.
MIN_WHOLE_MATCH_TOKENS = 8


class EvalSetError(ValueError):
    """An evaluation set that cannot be read; the message names the benchmark, the file, the item and the field."""


@dataclass(frozen=True)
class EvalItem:
    item_id: str
    text: str


@dataclass(frozen=True)
class Match:
    """The first eval item a text shares an n-gram with, and that n-gram (normalised tokens joined by spaces)."""

    benchmark: str
    item_id: str
    ngram: str


# ---- loading ---------------------------------------------------------------------------------------------------------
class _FieldError(Exception):
    """A field of one item that cannot be read; the caller adds where the item is."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def _describe_keys(value: dict[str, Any]) -> str:
    keys = ", ".join(map(str, value)) or "no fields"
    return f"it has: {keys}"


def _resolve(item: Any, field: str) -> Any:
    """The value at the dotted ``field`` of ``item``, taking the first element of every list on the way."""
    value = item
    walked: list[str] = []
    for part in field.split("."):
        if isinstance(value, list):
            if not value:
                raise _FieldError(field, f"{'.'.join(walked)} is an empty list")
            value = value[0]
            walked[-1] += "[0]"
        where = ".".join(walked) or "the item"
        if not isinstance(value, dict):
            raise _FieldError(field, f"{where} is a {type(value).__name__}, not an object")
        if part not in value:
            raise _FieldError(field, f"missing: {where} has no {part!r} ({_describe_keys(value)})")
        value = value[part]
        walked.append(part)
    return value


def _as_text(value: Any, field: str) -> str:
    if value is None:
        return ""  # a null cell (parquet, datasets) is an absent text, not a broken file
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(value)  # e.g. a list of answer choices
    raise _FieldError(field, f"expected text, got {type(value).__name__}")


def _item(value: Any, position: int, eval_set: EvalSetConfig) -> EvalItem:
    if not isinstance(value, dict):
        raise _FieldError("", f"expected an object, got {type(value).__name__}")
    text = " ".join(_as_text(_resolve(value, field), field) for field in eval_set.text_fields)
    if eval_set.id_field is None:
        return EvalItem(str(position), text)
    item_id = _resolve(value, eval_set.id_field)
    if not isinstance(item_id, (str, int)) or isinstance(item_id, bool):
        raise _FieldError(eval_set.id_field, f"expected a string or an integer id, got {type(item_id).__name__}")
    return EvalItem(str(item_id), text)


def _json_items(path: Path, eval_set: EvalSetConfig) -> Iterator[EvalItem]:
    try:
        for located in read_json_values(path):
            try:
                yield _item(located.value, located.index, eval_set)
            except _FieldError as exc:
                raise EvalSetError(f"eval set {eval_set.name!r}: {located.problem(exc.field, exc.message)}") from None
    except InputFileError as exc:
        raise EvalSetError(f"eval set {eval_set.name!r}: {exc}") from None


def _row_items(path: Path, rows: Iterable[dict[str, Any]], eval_set: EvalSetConfig) -> Iterator[EvalItem]:
    for position, row in enumerate(rows):
        try:
            yield _item(row, position, eval_set)
        except _FieldError as exc:
            raise EvalSetError(f"eval set {eval_set.name!r}: {path}: row {position}: {exc.field}: {exc.message}") from None


def _columns(eval_set: EvalSetConfig, available: Sequence[str]) -> list[str] | None:
    """The columns the fields start with (a missing one is reported by _resolve, naming the field), or None for all.

    None when none of them exists: a table of no columns has no rows in ``datasets``, which would make a misspelt
    field an empty eval set rather than an error.
    """
    wanted = {field.split(".")[0] for field in eval_set.text_fields}
    if eval_set.id_field:
        wanted.add(eval_set.id_field.split(".")[0])
    return [name for name in available if name in wanted] or None


def _parquet_rows(path: Path, eval_set: EvalSetConfig) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a file that is not parquet
        raise EvalSetError(f"eval set {eval_set.name!r}: {path}: not a readable parquet file: {exc}") from None
    table = parquet.read(columns=_columns(eval_set, parquet.schema_arrow.names))
    return table.to_pylist()


def _dataset_rows(path: Path, eval_set: EvalSetConfig) -> list[dict[str, Any]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise EvalSetError(
            f"eval set {eval_set.name!r}: {path}: a directory, but not a Hugging Face dataset (save_to_disk)"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if eval_set.split is None and len(splits) != 1:
            raise EvalSetError(f"eval set {eval_set.name!r}: {path}: holds splits {', '.join(splits)}; set split")
        split = eval_set.split if eval_set.split is not None else splits[0]
        if split not in loaded:
            raise EvalSetError(f"eval set {eval_set.name!r}: {path}: no split {split!r} (it has: {', '.join(splits)})")
        loaded = loaded[split]
    columns = _columns(eval_set, loaded.column_names)
    return (loaded if columns is None else loaded.select_columns(columns)).to_list()


def load_eval_set(eval_set: EvalSetConfig) -> list[EvalItem]:
    """The items of one evaluation set: JSON (array of objects), JSON lines, parquet or a dataset directory.

    Raises :class:`EvalSetError` naming the file, the item (line, or row position) and the field at fault.
    """
    path = Path(eval_set.path)
    if not path.exists():
        raise EvalSetError(f"eval set {eval_set.name!r}: {path}: not found")
    if path.is_dir():
        return list(_row_items(path, _dataset_rows(path, eval_set), eval_set))
    if path.suffix.lower() == ".parquet":
        return list(_row_items(path, _parquet_rows(path, eval_set), eval_set))
    return list(_json_items(path, eval_set))


# ---- the index -------------------------------------------------------------------------------------------------------
class ContaminationIndex:
    """Hashed n-grams of evaluation items, each pointing at the first item that holds it."""

    def __init__(self, ngram: int = 13, ngram_ko: int = 13, min_tokens: int = MIN_WHOLE_MATCH_TOKENS):
        self.ngram = ngram
        self.ngram_ko = ngram_ko
        self.min_tokens = min_tokens
        self._owners: list[tuple[str, str]] = []
        self._ngrams: dict[int, int] = {}
        self._short_lengths: set[int] = set()
        self.items = 0
        self.whole_items = 0
        self.skipped_short = 0

    @property
    def ngram_count(self) -> int:
        return len(self._ngrams)

    def _tokens_and_n(self, text: str) -> tuple[tuple[str, ...], int]:
        if HANGUL_RE.search(text):
            return tuple(tokenize_korean(text)), self.ngram_ko
        return tuple(tokenize_unicode(text)), self.ngram

    def add(self, benchmark: str, item_id: str, text: str) -> None:
        tokens, n = self._tokens_and_n(text)
        if len(tokens) < min(self.min_tokens, n):
            self.skipped_short += 1
            return
        owner = len(self._owners)
        self._owners.append((benchmark, item_id))
        self.items += 1
        # setdefault: an n-gram shared by several items reports the first, so reports do not depend on later sets.
        setdefault = self._ngrams.setdefault
        if len(tokens) < n:
            self.whole_items += 1
            self._short_lengths.add(len(tokens))
            setdefault(hash(tokens), owner)
            return
        for start in range(len(tokens) - n + 1):
            setdefault(hash(tokens[start : start + n]), owner)

    def add_many(self, benchmark: str, items: Iterable[EvalItem]) -> None:
        for item in items:
            self.add(benchmark, item.item_id, item.text)

    def find(self, text: str) -> Match | None:
        """The first eval item ``text`` shares an n-gram (or a whole short item) with, or ``None``."""
        if not self._ngrams:
            return None
        streams = []
        if HANGUL_RE.search(text):
            streams.append((tuple(tokenize_korean(text)), self.ngram_ko))
        streams.append((tuple(tokenize_unicode(text)), self.ngram))
        get = self._ngrams.get
        for tokens, n in streams:
            for length in (n, *sorted(self._short_lengths - {n})):
                for start in range(len(tokens) - length + 1):
                    window = tokens[start : start + length]
                    owner = get(hash(window))
                    if owner is not None:
                        benchmark, item_id = self._owners[owner]
                        return Match(benchmark, item_id, " ".join(window))
        return None


def build_index(eval_sets: Sequence[EvalSetConfig], ngram: int = 13, ngram_ko: int = 13,
                min_tokens: int = MIN_WHOLE_MATCH_TOKENS) -> ContaminationIndex:
    """An index over every item of ``eval_sets``, logging what was indexed and how long it took."""
    started = time.perf_counter()
    index = ContaminationIndex(ngram=ngram, ngram_ko=ngram_ko, min_tokens=min_tokens)
    for eval_set in eval_sets:
        items = load_eval_set(eval_set)
        if not items:
            log.warning("decontamination: eval set %r (%s) has no items", eval_set.name, eval_set.path)
        index.add_many(eval_set.name, items)
    log.info(
        "decontamination: indexed %d items of %d eval set(s) (%s): %d n-grams, %d short items matched whole, "
        "%d under %d tokens not matched, in %.2f s",
        index.items, len(eval_sets), ", ".join(s.name for s in eval_sets), index.ngram_count, index.whole_items,
        index.skipped_short, index.min_tokens, time.perf_counter() - started,
    )
    return index


# ---- the curation step -----------------------------------------------------------------------------------------------
class DecontaminationStep(Step):
    """Drop a candidate that shares an n-gram with an evaluation item (reason ``contaminated``)."""

    name = "decontamination"
    reads = ("instruction", "input")
    order_independent = True

    def __init__(self, index: ContaminationIndex, fields: Sequence[str] = ("instruction", "input")):
        self.index = index
        self.reads = tuple(fields)

    def check(self, record: Record) -> Drop | None:
        match = self.index.find(" ".join(getattr(record, field) for field in self.reads))
        if match is None:
            return None
        return Drop("contaminated", f"{match.benchmark} item {match.item_id}",
                    {"benchmark": match.benchmark, "item_id": match.item_id, "ngram": match.ngram})


def build_decontamination(config: DecontaminationConfig) -> list[Step]:
    """No step without eval sets; otherwise one step over an index of all of them."""
    if not config.eval_sets:
        return []
    index = build_index(config.eval_sets, config.ngram, config.ngram_ko, config.min_tokens)
    return [DecontaminationStep(index, config.fields)]
