"""``language: ko`` through the whole pipeline, against a fake OpenAI-compatible server that answers in Korean.

The fake (``FakeOpenAI`` of ``tests/test_stream_order.py``, scripted per request index) returns structured output
(``{"tasks": [...]}``, the default response mode) holding new Korean tasks, particle-variant near-copies of earlier
ones (을/를, 이/가/은/는, 의/에, -세요/-시오), an exact copy and some English instructions. The run goes through
:func:`pipeline.lifecycle.generate` with the export on (HF dataset, parquet, charts, card). It shows that

- ``dedup.tokenizer: auto`` resolves to Kiwi morphemes for Korean, and the run's dedup used them: the near-copies,
  which rouge-score's tokenizer scores 0.0 (it drops Hangul), are rejected as ``rouge_similar`` with the exact
  morpheme ROUGE-L score and the text they copy; one of them only morphemes catch (whole words score 0.625);
- English instructions are dropped by the language check (``not_korean``);
- Hangul is stored as UTF-8, not ``\\u`` escapes, in accepted.jsonl, rejected.jsonl and alpaca_data.json, and
  comes back as the exact strings from those, the parquet file and the saved HF dataset;
- the dataset card says ``language: [ko]`` and its root-verb table lists Korean predicates.

A hypothesis property test checks ``RougeDedup(tokenizer="ko")`` against a brute-force reference (Kiwi tokens,
plain dynamic-programming LCS, rouge-score's F-measure, keep iff nothing kept scores above the threshold) on texts
from a small Korean word/particle alphabet, so that near-duplicates are common.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import ExportConfig, GenerationConfig, LLMConfig
from pipeline.dedup import RougeDedup
from pipeline.verbs import verb_object
from pipeline.generate import GenerationRun
from pipeline.lifecycle import generate
from pipeline.prompts import response_schema
from pipeline.rouge import rouge_l_fmeasure
from pipeline.text import HANGUL_RE, get_kiwi, tokenize_korean, tokenize_rouge
from tests.test_dedup import assert_matches_reference
from tests.test_stream_order import FakeOpenAI, completion_body

TASKS = 4

# ---- what the fake server answers ----------------------------------------------------------------------------------
# New tasks: far from each other and from every Korean seed (best morpheme ROUGE-L against a seed <= 0.6).
POEM = "주어진 단어를 모두 사용하여 짧은 시를 써 주세요."
COMPLAINT = "고객의 불만 사항을 읽고 정중한 답장을 작성해 주세요."
TRANSLATE = "다음 문장을 영어로 번역하세요."
MINUTES = "회의록 초안에서 어색한 표현을 찾아 자연스럽게 고쳐 주세요."
NOVELS = "여름 휴가 때 읽기 좋은 장편 소설을 세 권 골라 주세요."
PYTHON = "파이썬에서 리스트와 튜플의 차이를 설명하세요."
GREETING = "첫 출근 날 동료들에게 건넬 자기소개 인사말을 만들어 주세요."

# Near-copies (copy, original, what changed). Each scores 0.0 with rouge-score's tokenizer (no [a-z0-9] at all).
NEAR_COPIES = [
    ("다음 문장을 영어로 번역하시오.", TRANSLATE, "ending -세요 -> -시오"),
    ("고객이 불만 사항은 읽고 정중한 답장이 작성해 주세요.", COMPLAINT, "particles 의/을/을 -> 이/은/이"),
    ("주어진 단어로 모두 사용하여 짧은 시를 써 주세요.", POEM, "particle 를 -> 로"),
    ("파이썬에서 리스트와 튜플에 차이를 설명하세요.", PYTHON, "particle 의 -> 에 (same request as the original)"),
    ("회의록 초안에서 어색한 표현은 찾아 자연스럽게 고쳐 주세요.", MINUTES, "particle 을 -> 은"),
]
#: Three of eight words differ, so whole-word tokens score it 0.625 (kept at 0.7); morphemes see three particles.
ONLY_MORPHEMES_CATCH = NEAR_COPIES[1][0]

ENGLISH = [
    "Translate the following sentence into French.",
    "Explain the difference between a list and a tuple in Python.",
    "Write a short poem about the sea and the wind.",
]


def task(instruction: str, input: str, output: str) -> dict[str, str]:
    return {"instruction": instruction, "input": input, "output": output}


# One list of TASKS tasks per request index, in the order the model "wrote" them.
SCRIPT = [
    [
        task(POEM, "바다, 등대, 새벽", "새벽 바다 위로\n등대가 홀로 깨어\n길을 비춘다."),
        task(COMPLAINT, "주문한 지 2주가 지났는데 아직도 배송이 안 됐어요. 환불해 주세요.",
             "불편을 드려 정말 죄송합니다. 확인 즉시 환불 절차를 진행하겠습니다."),
        task(ENGLISH[0], "Il fait beau aujourd'hui.", "The weather is nice today."),
        task(TRANSLATE, "오늘은 날씨가 정말 좋네요.", "The weather is really nice today."),
    ],
    [
        task(NEAR_COPIES[0][0], "저는 한국어를 공부하고 있어요.", "I am studying Korean."),
        task(MINUTES, "다음 회의는 다음 주에 하기로 결정을 하였습니다.", "다음 회의는 다음 주에 열기로 했습니다."),
        task(NEAR_COPIES[1][0], "상품이 파손되어 도착했습니다.", "불편을 드려 죄송합니다. 새 상품으로 바로 보내 드리겠습니다."),
        task(ENGLISH[1], "", "A list is mutable; a tuple is immutable."),
    ],
    [
        task(PYTHON, "없음", "리스트는 변경할 수 있고 튜플은 변경할 수 없습니다."),
        task(NEAR_COPIES[2][0], "하늘, 구름, 바람", "하늘에 구름이\n바람 따라 흘러간다."),
        task(NEAR_COPIES[3][0], "", "리스트는 대괄호, 튜플은 소괄호로 만듭니다."),
        task(NOVELS, "<입력 없음>", "1. 토지\n2. 태백산맥\n3. 아리랑"),
    ],
    [
        task(NEAR_COPIES[4][0], "검토해 본 결과 문제가 없는 것으로 보여집니다.", "검토해 보니 문제가 없어 보입니다."),
        task(ENGLISH[2], "", "The sea sings, the wind replies."),
        # An exact copy (instruction and input) of an accepted task: the exact-duplicate filter drops it before dedup.
        task(TRANSLATE, "오늘은 날씨가 정말 좋네요.", "Today the weather is really nice."),
        task(GREETING, "", "안녕하세요, 오늘부터 함께 일하게 된 김민지입니다. 잘 부탁드립니다."),
    ],
]
assert all(len(tasks) == TASKS for tasks in SCRIPT)

#: Accepted in this order; the last one reaches the target, so the run is ``completed``.
EXPECTED_ACCEPTED = [POEM, COMPLAINT, TRANSLATE, MINUTES, PYTHON, NOVELS, GREETING]
#: Korean predicates the root-verb table must show, one record each.
#: The main predicate is the sentence's last verb, a noun + 하다 (번역하다, 설명하다, 작성하다) included; "읽고 ... 작성해
#: 주세요" is about writing, not reading.
EXPECTED_VERBS = {"쓰다": 1, "작성하다": 1, "번역하다": 1, "고치다": 1, "설명하다": 1, "고르다": 1, "만들다": 1}


class KoreanFakeOpenAI(FakeOpenAI):
    """The stream-order fake's HTTP server, answering request ``i`` (known from its sampling seed) with ``script[i]``.

    Even request indices get raw UTF-8 JSON bodies (as vLLM sends them), odd ones ``\\u``-escaped JSON: both must
    arrive as the same Hangul.
    """

    def __init__(self, seed_to_index: dict[int, int], script: list[list[dict[str, str]]]):
        super().__init__(seed_to_index, hang_index=-1)
        self.script = script
        self.requests: dict[int, dict] = {}
        self.contents: dict[int, str] = {}

    def handle(self, handler, body: dict) -> None:
        index = self.seed_to_index[body["seed"]]
        content = json.dumps({"tasks": self.script[index]}, ensure_ascii=False)
        with self.lock:
            self.requests[index] = body
            self.contents[index] = content
        payload = completion_body(index, body["model"], content)
        data = json.dumps(payload, ensure_ascii=index % 2 == 1).encode("utf-8")
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:  # the client went away
            pass


# ---- brute-force reference ---------------------------------------------------------------------------------------
def lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence by plain dynamic programming."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def ko_score(new: str, old: str) -> float:
    """Alpaca's ROUGE-L F-measure of ``new`` (target) against ``old`` (prediction) on Kiwi morphemes."""
    a, b = tokenize_korean(new), tokenize_korean(old)
    return rouge_l_fmeasure(lcs_length(a, b), len(a), len(b))


def ko_reference(texts: list[str], threshold: float, seeds: list[str] = ()) -> list[tuple[bool, list[float]]]:
    """Per text: keep iff no indexed item (seeds, then kept texts) scores above ``threshold``; and those scores."""
    indexed = [tokenize_korean(seed) for seed in seeds]
    results = []
    for text in texts:
        tokens = tokenize_korean(text)
        scores = [rouge_l_fmeasure(lcs_length(tokens, old), len(tokens), len(old)) for old in indexed]
        keep = max(scores, default=0.0) <= threshold
        results.append((keep, scores))
        if keep:
            indexed.append(tokens)
    return results


@pytest.fixture(scope="module", autouse=True)
def warm_kiwi() -> None:
    get_kiwi()  # load the model once, outside hypothesis' timing


# ---- the whole run ---------------------------------------------------------------------------------------------------
def make_config(tmp_path: Path, base_url: str = "http://unused/v1") -> GenerationConfig:
    llm = LLMConfig(base_urls=[base_url], model="fake-ko", max_concurrency=4, request_timeout_s=30, max_retries=2,
                    backoff_initial_s=0.1, backoff_max_s=0.2, max_tokens=1024)
    return GenerationConfig(
        run_name="ko-e2e", output_dir=str(tmp_path), language="ko", target=len(EXPECTED_ACCEPTED),
        tasks_per_request=TASKS, max_requests=len(SCRIPT), llm=llm,
        export=ExportConfig(hf_dataset=True, charts=True, sample_rows=5),
    )


def read_jsonl_bytes(path: Path) -> tuple[bytes, list[dict]]:
    raw = path.read_bytes()
    return raw, [json.loads(line) for line in raw.decode("utf-8").splitlines() if line]


def assert_stored_as_utf8(raw: bytes, strings: list[str]) -> None:
    """Every string is in the file as its UTF-8 bytes, and no non-ASCII character is escaped."""
    assert b"\\u" not in raw
    for text in strings:
        assert json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8") in raw, text


@pytest.fixture(scope="module")
def korean_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ko-e2e")
    probe = make_config(tmp_path)
    builder = GenerationRun(probe).builder
    seed_to_index = {builder.render(i).sampling_seed: i for i in range(len(SCRIPT))}
    assert len(seed_to_index) == len(SCRIPT)
    with KoreanFakeOpenAI(seed_to_index, SCRIPT) as fake:
        config = probe.model_copy(update={"llm": probe.llm.model_copy(update={"base_urls": [fake.base_url]})})
        summary = generate(config)
    return config, summary, fake


def test_korean_run_completes_in_structured_mode(korean_run) -> None:
    config, summary, fake = korean_run
    assert summary.reason == "target reached" and summary.accepted == len(EXPECTED_ACCEPTED)
    assert summary.requests == len(SCRIPT) and sorted(fake.requests) == list(range(len(SCRIPT)))
    meta = json.loads((config.run_dir / "run.json").read_text(encoding="utf-8"))
    assert meta["status"] == "completed" and meta["error"] is None
    assert meta["config"]["language"] == "ko" and meta["config"]["response_mode"] == "structured"
    assert meta["counts"]["rejected"] == {"exact_duplicate": 1, "not_korean": len(ENGLISH), "rouge_similar": len(NEAR_COPIES)}
    # Every request sent the Korean prompt and the structured-output schema, and what the fake answered is valid
    # under that schema (what vLLM would have enforced).
    for index, body in fake.requests.items():
        assert "한국어 지시문 데이터셋" in body["messages"][0]["content"]
        response_format = body["response_format"]
        assert response_format["type"] == "json_schema"
        schema = response_format["json_schema"]["schema"]
        assert schema == response_schema(TASKS)
        jsonschema.validate(json.loads(fake.contents[index]), schema)


def test_auto_tokenizer_is_kiwi_and_the_run_dedup_used_it(korean_run) -> None:
    config, _, _ = korean_run
    assert config.dedup.tokenizer == "auto"
    assert config.resolved_dedup_tokenizer == "ko"
    rejected = [json.loads(line) for line in (config.run_dir / "rejected.jsonl").read_text(encoding="utf-8").splitlines()]
    by_instruction = {r["instruction"]: r for r in rejected}
    for copy, original, change in NEAR_COPIES:
        # rouge-score's tokenizer sees no tokens in Hangul: Alpaca's own filter would keep every near-copy.
        assert tokenize_rouge(copy) == [] and tokenize_rouge(original) == []
        rouge_only = RougeDedup(tokenizer="rouge")
        rouge_only.add_seeds([original])
        decision = rouge_only.add(copy)
        assert decision.kept and decision.score == 0.0, change
        # The run rejected it with the exact score that Kiwi morphemes give, against the text it copies.
        record = by_instruction[copy]
        expected = ko_score(copy, original)
        assert record["reason"] == "rouge_similar", change
        assert record["similar_to"] == original, change
        assert record["score"] == expected > config.dedup.threshold, change
        assert record["detail"] == f"ROUGE-L {expected:.3f}"
    # Whole words (the 'unicode' tokenizer) would have kept this one: only morphemes see three changed particles.
    words = RougeDedup(tokenizer="unicode")
    words.add_seeds([COMPLAINT])
    assert words.add(ONLY_MORPHEMES_CATCH).kept


def test_english_instructions_are_dropped_by_the_language_check(korean_run) -> None:
    config, _, _ = korean_run
    _, rejected = read_jsonl_bytes(config.run_dir / "rejected.jsonl")
    not_korean = [r for r in rejected if r["reason"] == "not_korean"]
    assert [r["instruction"] for r in not_korean] == ENGLISH
    assert all(r["detail"] == "no Hangul in the instruction" for r in not_korean)
    exact = [r for r in rejected if r["reason"] == "exact_duplicate"]
    assert [(r["instruction"], r["request_index"]) for r in exact] == [(TRANSLATE, 3)]
    # Filters run before dedup: nothing English reached the ROUGE-L index or the accepted records.
    accepted = (config.run_dir / "accepted.jsonl").read_text(encoding="utf-8")
    assert not any(text in accepted for text in ENGLISH)


def test_hangul_is_stored_as_utf8_everywhere(korean_run) -> None:
    config, summary, _ = korean_run
    run_dir = config.run_dir
    first_tasks = {}
    for t in (t for tasks in SCRIPT for t in tasks):
        first_tasks.setdefault(t["instruction"], dict(t))  # the later exact copy was dropped
    expected_records = [first_tasks[instruction] for instruction in EXPECTED_ACCEPTED]
    for record in expected_records:  # the no-input markers are cleared
        if record["input"] in ("없음", "<입력 없음>"):
            record["input"] = ""
    assert [r["instruction"] for r in expected_records] == EXPECTED_ACCEPTED
    all_strings = [value for r in expected_records for value in r.values() if value]

    raw, accepted = read_jsonl_bytes(run_dir / "accepted.jsonl")
    assert_stored_as_utf8(raw, all_strings)
    assert [{k: r[k] for k in ("instruction", "input", "output")} for r in accepted] == expected_records

    raw, rejected = read_jsonl_bytes(run_dir / "rejected.jsonl")
    assert_stored_as_utf8(raw, [copy for copy, _, _ in NEAR_COPIES] + [original for _, original, _ in NEAR_COPIES])

    raw = (run_dir / "alpaca_data.json").read_bytes()
    assert_stored_as_utf8(raw, all_strings)
    assert json.loads(raw.decode("utf-8")) == expected_records

    assert summary.export.parquet == run_dir / "alpaca_data.parquet"
    table = pq.read_table(summary.export.parquet)
    assert table.column_names == ["instruction", "input", "output"]
    assert table.to_pylist() == expected_records

    from datasets import load_from_disk

    assert load_from_disk(str(summary.export.hf_dataset)).to_list() == expected_records


def test_dataset_card_is_korean(korean_run) -> None:
    config, summary, _ = korean_run
    card = (config.run_dir / "README.md").read_text(encoding="utf-8")
    assert card == (summary.export.hf_dataset / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\n")
    front_matter = yaml.safe_load(card.split("---\n")[1])
    assert front_matter["language"] == ["ko"]
    assert "language:\n- ko\n" in card
    # The root-verb table: rows "| verb | count | objects |" between its heading and the next one.
    section = card.split("#### Top root verbs and their direct objects\n", 1)[1].split("\n#", 1)[0]
    rows = [line.strip("|").split("|") for line in section.strip().splitlines()[2:]]
    verbs = {cells[0].strip(): int(cells[1]) for cells in rows}
    assert EXPECTED_VERBS.items() <= verbs.items(), verbs
    assert all(HANGUL_RE.search(verb) and verb.endswith("다") for verb in verbs), verbs
    # ... which is what the export's Kiwi analysis extracts from the accepted instructions.
    assert {verb_object(text, "ko")[0] for text in EXPECTED_ACCEPTED} - {None} == set(verbs)
    assert {p.name for p in summary.export.charts} == {f"{name}.png" for name in ("funnel", "rouge_to_seed", "rouge_to_other", "verbs", "lengths")}
    assert all(p.stat().st_size > 0 for p in summary.export.charts)


# ---- RougeDedup(tokenizer="ko") equals the brute-force reference --------------------------------------------------
NOUNS = ["문장", "영어", "고객", "답장", "단어", "표현", "시", "회의록"]
PARTICLES = ["을", "를", "이", "가", "은", "는", "의", "에", "로", ""]
PREDICATES = ["번역하세요", "번역하시오", "써 주세요", "고쳐 주세요", "설명하세요", "읽고 답하세요"]
# Alpaca's 0.7, a few others, and exactly achievable F values, so that some pairs land exactly on the threshold.
ACHIEVABLE_SCORES = sorted(
    {rouge_l_fmeasure(lcs, n, m) for n in range(1, 13) for m in range(1, 13) for lcs in range(1, min(m, n) + 1)}
)
THRESHOLDS = st.one_of(st.sampled_from([0.7, 0.5, 0.3, 0.9, 1.0]), st.sampled_from(ACHIEVABLE_SCORES))
Phrase = tuple[list[tuple[str, str]], str]


@st.composite
def phrases(draw: st.DrawFn, nouns: list[str]) -> Phrase:
    words = draw(st.lists(st.tuples(st.sampled_from(nouns), st.sampled_from(PARTICLES)), min_size=0, max_size=8))
    return words, draw(st.sampled_from(PREDICATES))


def _mutate(draw: st.DrawFn, phrase: Phrase, nouns: list[str]) -> Phrase:
    """A near-copy: particles swapped, words inserted, dropped or replaced, or another predicate."""
    words, predicate = list(phrase[0]), phrase[1]
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["particle", "particle", "insert", "delete", "noun", "predicate"]))
        position = draw(st.integers(0, max(len(words) - 1, 0)))
        if action == "insert" or not words:
            words.insert(position, (draw(st.sampled_from(nouns)), draw(st.sampled_from(PARTICLES))))
        elif action == "delete":
            del words[position]
        elif action == "particle":
            words[position] = (words[position][0], draw(st.sampled_from(PARTICLES)))
        elif action == "noun":
            words[position] = (draw(st.sampled_from(nouns)), words[position][1])
        else:
            predicate = draw(st.sampled_from(PREDICATES))
    return words, predicate


def render(phrase: Phrase) -> str:
    words, predicate = phrase
    return " ".join([noun + particle for noun, particle in words] + [predicate]) + "."


@st.composite
def korean_corpora(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """(seeds, texts): a few base phrases and many mutated copies of them, so many pairs sit near the threshold."""
    nouns = NOUNS[: draw(st.integers(2, len(NOUNS)))]
    bases = draw(st.lists(phrases(nouns), min_size=1, max_size=3))
    items = []
    for _ in range(draw(st.integers(1, 20))):
        if draw(st.integers(0, 3)) == 0:
            items.append(draw(phrases(nouns)))
        else:
            items.append(_mutate(draw, draw(st.sampled_from(bases)), nouns))
    texts = [render(item) for item in items]
    seed_count = draw(st.integers(0, min(3, len(texts))))
    return texts[:seed_count], texts[seed_count:]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpus=korean_corpora(), threshold=THRESHOLDS, top_k=st.sampled_from([0, 0, 3]))
def test_ko_dedup_decisions_equal_brute_force(corpus: tuple[list[str], list[str]], threshold: float, top_k: int) -> None:
    seeds, texts = corpus
    dedup = RougeDedup(threshold=threshold, tokenizer="ko", top_k=top_k)
    dedup.add_seeds(seeds)
    for decision, scores in assert_matches_reference(dedup, seeds, texts, threshold, reference_filter=ko_reference):
        if top_k:
            assert decision.score == max(scores, default=0.0)  # exact when every item is scored
            assert decision.most_similar == sorted(enumerate(scores), key=lambda p: (-p[1], p[0]))[:top_k]
