"""Decontamination against evaluation sets: loaders, 13-gram matching, the short-item rule, Korean, and the step."""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

import pytest

from pipeline import PROJECT_ROOT
from pipeline.config import DecontaminationConfig, EvalSetConfig
from pipeline.decontaminate import (
    ContaminationIndex,
    DecontaminationStep,
    EvalItem,
    EvalSetError,
    build_decontamination,
    load_eval_set,
)
from pipeline.records import Record
from pipeline.seeds import load_seeds
from pipeline.text import get_kiwi
from tests.conftest import SHARED_BENCH

USER_ORIENTED = SHARED_BENCH / "selfinstruct_user_oriented_instructions.jsonl"

ROWS = [
    {"id": "t1", "instruction": "Summarize the article.", "instances": [{"input": "Cats sleep a lot.", "output": "x"},
                                                                         {"input": "ignored", "output": "y"}]},
    {"id": "t2", "instruction": "Name a colour.", "instances": [{"input": "", "output": "red"}]},
]
EXPECTED = [EvalItem("t1", "Summarize the article. Cats sleep a lot."), EvalItem("t2", "Name a colour. ")]

# 24 words: its 12 13-grams are what a copy must share.
LONG_ITEM = ("Write a short story about a lighthouse keeper who finds a message in a bottle "
             "that was written by her own grandmother decades ago.")


def _write_json(path: Path, rows: list[dict]) -> Path:
    path = path.with_suffix(".json")
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return path


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path = path.with_suffix(".jsonl")
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = path.with_suffix(".parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _write_dataset(path: Path, rows: list[dict]) -> Path:
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


WRITERS = {"json": _write_json, "jsonl": _write_jsonl, "parquet": _write_parquet, "dataset": _write_dataset}


def _eval_set(path: Path, **values) -> EvalSetConfig:
    values = {"name": "bench", "text_fields": ["instruction", "instances.input"], "id_field": "id", **values}
    return EvalSetConfig(path=str(path), **values)


def _index(*texts: str, ngram: int = 13) -> ContaminationIndex:
    index = ContaminationIndex(ngram=ngram, ngram_ko=ngram)
    for position, text in enumerate(texts):
        index.add("bench", f"item_{position}", text)
    return index


# ---- loaders ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_every_format_loads_with_dotted_fields(tmp_path: Path, kind: str) -> None:
    path = WRITERS[kind](tmp_path / "eval", ROWS)
    assert load_eval_set(_eval_set(path)) == EXPECTED


def test_dataset_dict_split(tmp_path: Path) -> None:
    import datasets

    other = [{**row, "id": "other_" + row["id"]} for row in ROWS]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(other), "test": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    assert load_eval_set(_eval_set(tmp_path / "dd", split="test")) == EXPECTED
    with pytest.raises(EvalSetError, match="holds splits train, test; set split"):
        load_eval_set(_eval_set(tmp_path / "dd"))
    with pytest.raises(EvalSetError, match="no split 'validation'"):
        load_eval_set(_eval_set(tmp_path / "dd", split="validation"))


def test_position_is_the_id_without_an_id_field(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "eval", ROWS)
    items = load_eval_set(_eval_set(path, id_field=None, text_fields=["instruction"]))
    assert items == [EvalItem("0", "Summarize the article."), EvalItem("1", "Name a colour.")]


@pytest.mark.parametrize(("kind", "where"), [("jsonl", r":2: "), ("json", r":\d+: \[1\]\.")])
def test_missing_field_names_file_item_and_field(tmp_path: Path, kind: str, where: str) -> None:
    rows = [ROWS[0], {"id": "t2", "instruction": "Name a colour.", "instances": [{"output": "red"}]}, ROWS[0]]
    path = WRITERS[kind](tmp_path / "eval", rows)
    with pytest.raises(EvalSetError) as excinfo:
        load_eval_set(_eval_set(path))
    message = str(excinfo.value)
    expected = "eval set 'bench': " + re.escape(str(path)) + where + r"instances\.input: missing: instances\[0\] has no 'input' \(it has: output\)"
    assert re.fullmatch(expected, message), message


@pytest.mark.parametrize("kind", ["parquet", "dataset"])
def test_missing_column_names_file_row_and_field(tmp_path: Path, kind: str) -> None:
    # A columnar file fills a struct field absent from one row with null, so what it can lack is a whole column.
    path = WRITERS[kind](tmp_path / "eval", [{"id": "a", "instruction": "One."}, {"id": "b", "instruction": "Two."}])
    with pytest.raises(EvalSetError) as excinfo:
        load_eval_set(_eval_set(path, text_fields=["instruction", "question"]))
    message = str(excinfo.value)
    expected = "eval set 'bench': " + re.escape(str(path)) + r": row 0: question: missing: the item has no 'question' \(it has: id, instruction\)"
    assert re.fullmatch(expected, message), message
    # With no configured column present at all, still an error, not an empty eval set.
    with pytest.raises(EvalSetError, match=r"row 0: question: missing: the item has no 'question' \(it has: id, instruction\)"):
        load_eval_set(_eval_set(path, text_fields=["question"], id_field=None))


def test_missing_id_and_empty_list_are_reported(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "eval", [ROWS[0], {"instruction": "No id.", "instances": [{"input": "", "output": "x"}]}])
    with pytest.raises(EvalSetError, match=r"eval\.jsonl:2: id: missing: the item has no 'id'"):
        load_eval_set(_eval_set(path))
    path = _write_jsonl(tmp_path / "empty", [{"id": "e", "instruction": "Hi.", "instances": []}])
    with pytest.raises(EvalSetError, match=r"empty\.jsonl:1: instances\.input: instances is an empty list"):
        load_eval_set(_eval_set(path))


def test_unreadable_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(EvalSetError, match="nowhere.jsonl: not found"):
        load_eval_set(_eval_set(tmp_path / "nowhere.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "instruction": "x"}\n{broken\n', encoding="utf-8")
    with pytest.raises(EvalSetError, match=r"bad\.jsonl:2: json: invalid JSON"):
        load_eval_set(_eval_set(tmp_path / "bad.jsonl", text_fields=["instruction"]))
    (tmp_path / "strings.json").write_text('["a task", "another"]', encoding="utf-8")
    with pytest.raises(EvalSetError, match=r"strings\.json:1: \[0\]: expected an object, got str"):
        load_eval_set(_eval_set(tmp_path / "strings.json", text_fields=["instruction"]))
    (tmp_path / "plain").mkdir()
    with pytest.raises(EvalSetError, match="not a Hugging Face dataset"):
        load_eval_set(_eval_set(tmp_path / "plain"))


# ---- matching --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "candidate",
    [
        LONG_ITEM,
        LONG_ITEM.upper(),
        LONG_ITEM.replace(" ", "  ").replace("bottle ", "bottle\n\n"),
        LONG_ITEM.replace("keeper who", "keeper, who").replace(".", "!!") + " Keep it under 300 words.",
        "Please do this: " + LONG_ITEM.replace("decades ago.", "long ago?"),
    ],
)
def test_casing_punctuation_and_spacing_do_not_hide_a_copy(candidate: str) -> None:
    match = _index("Translate this sentence into French please right now.", LONG_ITEM).find(candidate)
    assert match is not None
    assert (match.benchmark, match.item_id) == ("bench", "item_1")
    assert len(match.ngram.split()) == 13 and match.ngram == match.ngram.lower()


def test_unrelated_text_and_twelve_shared_words_do_not_match() -> None:
    index = _index(LONG_ITEM)
    assert index.find("Explain how photosynthesis works to a ten year old child in simple words.") is None
    words = LONG_ITEM.split()
    # A different word every 13th position leaves runs of 12 shared words only.
    twelve = " ".join("X" if position % 13 == 12 else word for position, word in enumerate(words))
    assert index.find(twelve) is None
    thirteen = " ".join("X" if position == 13 else word for position, word in enumerate(words))
    assert index.find(thirteen) is not None


def test_short_item_must_appear_whole() -> None:
    short = "Give me three tips for staying healthy this winter."  # 9 words
    index = _index(LONG_ITEM, short)
    match = index.find("Hi there! Give me three tips, for staying healthy this winter... Thanks a lot.")
    assert match is not None and match.item_id == "item_1"
    assert match.ngram == "give me three tips for staying healthy this winter"
    assert index.find("Give me three tips for staying healthy this year.") is None
    assert index.find("Give me three tips for staying healthy.") is None
    assert index.find("tips for staying healthy this winter") is None


def test_items_under_eight_tokens_are_not_matched() -> None:
    index = _index("Write a poem about cats.", "Suggest a recipe for a vegan dessert.")
    assert (index.items, index.skipped_short) == (0, 2)
    assert index.find("Write a poem about cats. Suggest a recipe for a vegan dessert.") is None


# ---- Korean ----------------------------------------------------------------------------------------------------------
KO_ITEM = "주어진 영화 리뷰가 긍정적인지 부정적인지 판단하고 그 이유를 간단히 설명하세요."  # 23 morphemes, 10 words


@pytest.fixture(scope="module")
def kiwi() -> None:
    get_kiwi()  # load the model once


def test_korean_particle_variant_shares_thirteen_morphemes(kiwi) -> None:
    index = _index(KO_ITEM)
    # 리뷰가 -> 리뷰는 and 이유를 -> 이유는: as words, the 10-word item is no longer there whole; as morphemes,
    # 긍정 적 이 ᆫ지 부정 적 이 ᆫ지 판단 하 고 그 이유 is a run of 13 unchanged ones.
    variant = "주어진 영화 리뷰는 긍정적인지 부정적인지 판단하고 그 이유는 간단히 설명하세요."
    match = index.find(variant)
    assert match is not None and match.item_id == "item_0"
    assert match.ngram == "긍정 적 이 ᆫ지 부정 적 이 ᆫ지 판단 하 고 그 이유"


def test_korean_with_no_thirteen_morpheme_run_does_not_match(kiwi) -> None:
    index = _index(KO_ITEM)
    # 리뷰가 -> 리뷰는 and 이유를 -> 까닭을: the longest unchanged run, 긍정 ... 고 그, is 12 morphemes.
    assert index.find("주어진 영화 리뷰는 긍정적인지 부정적인지 판단하고 그 까닭을 간단히 설명하세요.") is None
    assert index.find("다음 문장이 존댓말인지 반말인지 구분해 주세요. 이거 어디서 샀어?") is None


def test_english_passage_quoted_in_a_korean_candidate_matches(kiwi) -> None:
    # Kiwi keeps "1.5" and "u.s." whole where \w+ splits them, so no 13 Kiwi tokens in a row equal the item's.
    passage = ("Between 1.5 and 2.5 percent of U.S. adults say they eat 3.5 servings of greens on 4.2 days a week, "
               "per the 2019 C.D.C. survey.")
    index = _index(LONG_ITEM, passage)
    match = index.find("다음 글을 한국어로 번역하세요: " + passage)
    assert match is not None and match.item_id == "item_1"
    assert match.ngram == "between 1 5 and 2 5 percent of u s adults say they"


# ---- the step --------------------------------------------------------------------------------------------------------
def test_step_drops_with_reason_detail_and_evidence(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "eval", [{"id": "story_7", "instruction": LONG_ITEM}])
    config = DecontaminationConfig(eval_sets=[_eval_set(path, name="stories", text_fields=["instruction"])])
    [step] = build_decontamination(config)
    assert isinstance(step, DecontaminationStep) and step.name == "decontamination"
    assert step.reads == ("instruction", "input")
    record = Record(3, 1, "Do the following task.", LONG_ITEM.lower(), "Once upon a time ...")
    drop = step.check(record)
    assert drop is not None and drop.reason == "contaminated"
    assert drop.detail == "stories item story_7"
    assert drop.evidence == {"benchmark": "stories", "item_id": "story_7",
                             "ngram": "write a short story about a lighthouse keeper who finds a message in"}
    line = record.rejected_dict(drop, step.name)
    assert (line["benchmark"], line["item_id"], line["step"]) == ("stories", "story_7", "decontamination")
    assert step.check(Record(0, 0, "Name three rivers in Europe.", "", LONG_ITEM)) is None


def test_step_reads_the_configured_fields(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "eval", [{"id": "s", "instruction": LONG_ITEM}])
    config = DecontaminationConfig(eval_sets=[_eval_set(path, text_fields=["instruction"])], fields=["output"])
    [step] = build_decontamination(config)
    assert step.reads == ("output",)
    assert step.check(Record(0, 0, LONG_ITEM, "", "Sure.")) is None
    assert step.check(Record(0, 0, "Tell a story.", "", LONG_ITEM)) is not None


def test_several_eval_sets_in_one_index_and_logged(tmp_path: Path, caplog) -> None:
    first = _write_jsonl(tmp_path / "a", [{"id": "a1", "instruction": "Translate the following paragraph into Spanish and keep the tone."}])
    second = _write_json(tmp_path / "b", [{"instruction": LONG_ITEM}])
    config = DecontaminationConfig(eval_sets=[_eval_set(first, name="set-a", text_fields=["instruction"]),
                                              _eval_set(second, name="set-b", text_fields=["instruction"], id_field=None)])
    with caplog.at_level(logging.INFO, logger="pipeline.decontaminate"):
        [step] = build_decontamination(config)
    assert "indexed 2 items of 2 eval set(s) (set-a, set-b): 13 n-grams, 1 short items matched whole" in caplog.text
    drop = step.check(Record(0, 0, LONG_ITEM, "", "x"))
    assert drop is not None and drop.evidence["benchmark"] == "set-b" and drop.evidence["item_id"] == "0"


def test_an_ngram_held_by_several_items_reports_the_first() -> None:
    index = _index(LONG_ITEM, "Story time. " + LONG_ITEM, LONG_ITEM + " In French.")
    assert index.find(LONG_ITEM).item_id == "item_0"


def test_no_eval_sets_no_step() -> None:
    assert build_decontamination(DecontaminationConfig()) == []


# ---- acceptance: planted user-oriented eval tasks among the project's seeds -----------------------------------------
def _edit(kind: int, instruction: str, input_text: str) -> tuple[str, str]:
    """A light edit of one eval task, as a paraphrasing generator might make it."""
    last = "input" if input_text.strip() else "instruction"
    text = input_text if last == "input" else instruction

    def put(value: str) -> tuple[str, str]:
        return (instruction, value) if last == "input" else (value, input_text)

    words = text.split(" ")
    if kind == 0:
        return instruction.lower(), input_text.lower()
    if kind == 1:
        return instruction.rstrip(".?!") + "!", input_text.replace(",", ";").replace(".", " .")
    if kind == 2:
        position = max(0, len(words) - 3)
        return put(" ".join(words[:position] + ["something"] + words[position + 1 :]))
    if kind == 3:
        return instruction + " Please be brief.", input_text
    if kind == 4:
        return put(" ".join(words[:-1]))
    return instruction.replace(" ", "  ", 3).replace(". ", ".\n"), input_text.replace(" ", "\n", 2)


@pytest.mark.skipif(not USER_ORIENTED.is_file(), reason=f"{USER_ORIENTED} is absent (../shared is not here)")
def test_planted_eval_tasks_are_dropped_and_seeds_kept(kiwi) -> None:
    eval_set = EvalSetConfig(name="self-instruct-user-oriented", path=str(USER_ORIENTED),
                             text_fields=["instruction", "instances.input"], id_field="id")
    [step] = build_decontamination(DecontaminationConfig(eval_sets=[eval_set]))
    tasks = [json.loads(line) for line in USER_ORIENTED.read_text(encoding="utf-8").splitlines() if line.strip()]
    planted = random.Random(13).sample(tasks, 20)
    candidates: list[tuple[str | None, Record]] = []
    for number, task in enumerate(planted):
        instruction, input_text = _edit(number % 6, task["instruction"], task["instances"][0]["input"])
        assert (instruction, input_text) != (task["instruction"], task["instances"][0]["input"])
        candidates.append((task["id"], Record(number, 0, instruction, input_text, task["instances"][0]["output"])))
    seeds = load_seeds(PROJECT_ROOT / "seeds" / "seed_tasks.jsonl") + load_seeds(PROJECT_ROOT / "seeds" / "seed_tasks_ko.jsonl")
    for number, seed in enumerate(seeds):
        for position, instance in enumerate(seed.instances):
            candidates.append((None, Record(100 + number, position, seed.instruction, instance.input, instance.output)))
    assert len(candidates) >= 220
    random.Random(0).shuffle(candidates)

    dropped_planted, missed, dropped_seeds = [], [], []
    for planted_id, record in candidates:
        drop = step.check(record)
        if planted_id is None:
            if drop is not None:
                dropped_seeds.append((record.instruction, drop.detail, drop.evidence["ngram"]))
            continue
        if drop is None:
            missed.append(planted_id)
            continue
        assert drop.reason == "contaminated"
        assert (drop.evidence["benchmark"], drop.evidence["item_id"]) == ("self-instruct-user-oriented", planted_id)
        dropped_planted.append(planted_id)
    assert dropped_seeds == []
    assert len(dropped_planted) >= 19, f"missed: {missed}"
