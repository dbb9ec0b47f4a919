"""Format checks: each drops what a weak model leaks or loops on, with its reason and evidence, and keeps genuine tasks.

Cases marked "SmolLM2" are verbatim records of a real SmolLM2-135M run (``outputs/demo``, not in the repository).
"""

from __future__ import annotations

import json

import pytest

from pipeline import PROJECT_ROOT
from pipeline.config import FormatChecksConfig
from pipeline.curation import CurationChain
from pipeline.format_checks import (
    EchoedOutputCheck,
    LabelPrefixCheck,
    LeakedLabelCheck,
    PlaceholderInputCheck,
    RepetitionLoopCheck,
    build_format_checks,
)
from pipeline.records import Drop, Record
from pipeline.seeds import load_seeds


def rec(instruction: str = "Summarise the paragraph in one sentence.", input: str = "", output: str = "A fine answer.") -> Record:
    return Record(0, 0, instruction, input, output)


def evidence(drop: Drop | None) -> dict | None:
    return None if drop is None else {"reason": drop.reason, **drop.evidence}


ALL_CHECKS = build_format_checks(FormatChecksConfig(enabled=True))


# ---- leaked_label --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "record, field, match",
    [
        # SmolLM2: the accepted record whose instruction is the prompt's numbering (its input and output too).
        (rec("3. Instructions for a new hire in a non-technical way", "4. Instructions for a new hire in a non-technical way",
             "5. Instructions for a new hire in a non-technical way"), "instruction", "3. Instructions"),
        # SmolLM2: a good instruction with the numbering leaked into input and output.
        (rec("Writing a brief thank-you note to a new hire in a non-technical way", "1. Instructions for a new addition",
             "2. Instructions for a new hire"), "input", "1. Instructions"),
        # SmolLM2: "N. Instruction" as the whole input and output.
        (rec("What is the probability of rolling a sum of 7 with two fair six-sided dice?", "3. Instruction", "2. Instruction"),
         "input", "3. Instruction"),
        # SmolLM2 (structured mode): the label opening an input.
        (rec("Explain inflation in simple terms.", "Instructions: explain inflation in simple terms.", "Prices rise over time."),
         "input", "Instructions:"),
        (rec(output="Paris.\n\n7. Instruction: Name the capital of Spain.\n7. Input: <noinput>"), "output", "7. Instruction:"),
        (rec(output="Paris.\n###"), "output", "###"),
        (rec(output="Paris. ###"), "output", "###"),
        (rec(output="### Response: Paris is the capital."), "output", "### Response:"),
        (rec(output="Output: 25"), "output", "Output:"),
        (rec(input="Input: The meeting moved to Friday."), "input", "Input:"),
        (rec(input="출력: 6"), "input", "출력:"),
        (rec("Write a haiku about autumn rain.\nInput: none"), "instruction", "Input:"),
        (rec(output="Paris.\n\n３．Instruction： Name a river."), "output", "3.Instruction:"),  # full-width forms
        (rec(output="Paris.\n### 4. Output: Madrid"), "output", "### 4. Output:"),
        (rec(output="Paris. ### 7. Instruction: Name the capital of Spain."), "output", "7. Instruction:"),
        (rec(output="**Output:** 25"), "output", "**Output:"),
        # Korean: the prompt's English labels and the Korean forms a model may write.
        (rec("수도를 알려 주세요.", "", "서울입니다.\n\n3. 지시문: 부산의 인구를 알려 주세요."), "output", "3. 지시문:"),
        (rec("다음 과일을 색깔별로 분류하세요.", "입력: 사과, 바나나, 포도", "빨강: 사과"), "input", "입력:"),
        (rec("다음 문장을 요약하세요.\n입력: 회의가 금요일로 옮겨졌다.", "", "회의가 옮겨졌다."), "instruction", "입력:"),
        (rec("짧은 시를 쓰세요.", "", "봄비가 내린다.\n지시: 다음 글을 읽고 요약하세요."), "output", "지시:"),
        (rec("짧은 시를 쓰세요.", "", "2. Instruction: 겨울에 대한 시를 쓰세요."), "output", "2. Instruction:"),
        (rec("짧은 시를 쓰세요.", "1. 지시문", "봄비가 내린다."), "input", "1. 지시문"),
    ],
)
def test_leaked_label_drops(record, field, match):
    assert evidence(LeakedLabelCheck().check(record)) == {"reason": "leaked_label", "field": field, "match": match}


@pytest.mark.parametrize(
    "record",
    [
        # A coding example's Input/Output lines and a recipe's "Instructions:" heading are genuine.
        rec("Write a Python function that squares a number.", "",
            "def square(x):\n    return x * x\n\nExample:\nInput: 5\nOutput: 25"),
        rec("Describe the mapping.", "", "The function maps Input: 5 to Output: 25."),
        rec("Document the function.", "", "**Input:** a list of numbers\n**Output:** their sum"),
        rec("Give an example for a squaring function.", "", "Input: 5\nOutput: 25"),
        rec("다음 함수의 입출력 예를 드세요.", "def double(x): return 2 * x", "입력: 3\n출력: 6"),
        rec("Summarise the manual.", "", "Section 2. Instructions: unpack the device. 3. Output: a summary."),
        rec("Write a recipe for pancakes.", "", "Ingredients: 2 eggs, 1 cup flour, 1 cup milk\nInstructions: Whisk everything and fry."),
        rec("Explain how to use a calculator.", "", "1. Input the numbers.\n2. Output the result to the screen."),
        rec("Outline a user manual.", "", "1. Introduction\n2. Instructions for use\n3. Troubleshooting"),
        rec("Plan a bake.", "", "### Step 1\nPreheat the oven.\n### Step 2\nMix the batter."),
        rec("How do you write a level-three heading in Markdown?", "", "Start the line with ### and a space."),
        rec("Read the instructions and summarise them.", "Instructions are printed on the box.", "Read the box."),
        rec("입력된 숫자의 합을 구하는 함수를 작성하세요.", "", "def add(a, b):\n    return a + b\n\n입력: 3, 4\n출력: 7"),
        rec("지시문을 읽고 요약하세요.", "지시문은 짧게 쓰세요.", "짧게 쓰라는 뜻입니다."),
        rec("다음 공지를 요약하세요.", "[국제발신] 고객님의 택배가 반송 예정입니다.", "택배가 반송될 예정이라는 문자입니다."),
    ],
)
def test_leaked_label_keeps(record):
    assert LeakedLabelCheck().check(record) is None


# ---- label_prefix --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "instruction, match",
    [
        ("Question: How can I create a plan that can help me improve my health?", "Question:"),  # SmolLM2
        ("Question: How to make money with your own help", "Question:"),  # SmolLM2
        ("Task: Summarise the article below.", "Task:"),
        ("Task 3: Summarise the article below.", "Task 3:"),
        ("Q: What is the boiling point of water?", "Q:"),
        ("Q1: What is the boiling point of water?", "Q1:"),
        ("Prompt: Write a limerick about a cat.", "Prompt:"),
        ("Instruction 3: Write a limerick about a cat.", "Instruction 3:"),
        ("  problem: Solve 3x + 7 = 22.", "problem:"),
        ("질문: 물의 끓는점은 몇 도인가요?", "질문:"),
        ("과제: 다음 글을 세 문장으로 요약하세요.", "과제:"),
        ("문제 1: 3x + 7 = 22를 푸세요.", "문제 1:"),
        ("질문：물의 끓는점은 몇 도인가요?", "질문:"),  # full-width colon
    ],
)
def test_label_prefix_drops(instruction, match):
    assert evidence(LabelPrefixCheck().check(rec(instruction))) == {"reason": "label_prefix", "field": "instruction", "match": match}


@pytest.mark.parametrize(
    "instruction",
    [
        "Answer the question: what is the boiling point of water?",
        "What is the task of a compiler?",
        "Questionnaire design: list five tips.",
        "Write a Q&A about the water cycle.",
        "Prompt engineers often ask: how long should a prompt be? Answer briefly.",
        "문제점을 세 가지 나열하세요.",
        "과제를 제출하기 전에 확인할 점을 알려 주세요.",
        "다음 질문에 답하세요: 물의 끓는점은?",
    ],
)
def test_label_prefix_keeps(instruction):
    assert LabelPrefixCheck().check(rec(instruction)) is None


# ---- echoed_output -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "record, echoes, extra",
    [
        # SmolLM2: the input with a full stop added, which the exact input_equals_output filter let through.
        (rec("Organize a party with only 20 people.", "This is a story about a person who helps others",
             "This is a story about a person who helps others."), "input", 0),
        # SmolLM2: the input with its full stop removed.
        (rec("The sentence should be in English.", "The top 5 countries that make up the EU are: France, Germany, Italy, Spain, and the UK.",
             "The top 5 countries that make up the EU are: France, Germany, Italy, Spain, and the UK"), "input", 0),
        # SmolLM2: the instruction repeated back, plus one word.
        (rec("This task involves creating", "this sentence.", "This task involves creating a"), "instruction", 1),
        # SmolLM2: instruction, input and output all the same sentence.
        (rec("The answer is based on science, but also based on your world's rules.",
             "The answer is based on science, but also based on your world's rules.",
             "The answer is based on science, but also based on your world's rules."), "instruction", 0),
        (rec("Explain why the sky is blue.", "", "explain why the sky is blue"), "instruction", 0),
        (rec("Rewrite the sentence formally.", "The meeting was moved to Friday.", "The meeting was moved to Friday. Thank you."), "input", 2),
        (rec("Rewrite the sentence formally.", "The meeting was moved to Friday.", "Sure: The meeting was moved to Friday."), "input", 1),
        (rec("다음 문장을 존댓말로 바꾸세요.", "팀 회의가 다음 주 금요일로 옮겨졌다.", "팀 회의가 다음 주 금요일로 옮겨졌다"), "input", 0),
        (rec("다음 문장을 존댓말로 바꾸세요.", "팀 회의가 다음 주 금요일로 옮겨졌다.", "팀 회의가 다음 주 금요일로 옮겨졌다. 감사합니다."), "input", 1),
        (rec("하늘이 파란 이유를 설명하세요.", "", "하늘이 파란 이유를 설명하세요"), "instruction", 0),
    ],
)
def test_echoed_output_drops(record, echoes, extra):
    assert evidence(EchoedOutputCheck().check(record)) == {"reason": "echoed_output", "echoes": echoes, "extra_words": extra}


@pytest.mark.parametrize(
    "record",
    [
        # Changing case is the task (a seed).
        rec("Convert the following title to title case.", "the old man and the sea", "The Old Man and the Sea"),
        # Completing an unfinished sentence adds a word or two to it.
        rec("Complete the proverb.", "Actions speak louder", "Actions speak louder than words."),
        rec("Complete the sentence.", "The capital of France is", "The capital of France is Paris."),
        rec("다음 속담을 완성하세요.", "가는 말이 고와야", "가는 말이 고와야 오는 말이 곱다."),
        # More than a couple of words added, or only part of the input kept.
        rec("Explain the delay.", "The meeting moved to Friday.", "The meeting moved to Friday because the room was booked."),
        rec("Extract the date.", "The meeting is on Friday, 5 May.", "Friday, 5 May"),
        rec("Define the word.", "Generous.", "Generous means kind."),
        rec("Use a counterstereotype to complete the sentence.", "..... are better at math.", "Girls are better at math."),
        rec("Correct the grammar.", "She go to school every day.", "She goes to school every day."),
        rec("Explain why the sky is blue.", "", "Explain: sunlight scatters off air molecules, and blue light scatters most."),
    ],
)
def test_echoed_output_keeps(record):
    assert EchoedOutputCheck().check(record) is None


# ---- repetition_loop -----------------------------------------------------------------------------------------------
# SmolLM2 (dropped as a duplicate in that run, but its output is the loop).
LOOP_EN = ("The most expensive ingredient in the recipe is the most expensive ingredient in the recipe is the most "
           "expensive ingredient in the recipe.")
# SmolLM2: an accepted output.
LOOP_EN_ACCEPTED = (
    "Your instructions should contain at least 2 sentences. Your output should be in English and include a title, "
    "description, and a photo with a black border. Your output should also include at least 2 actions, and you should "
    "describe them in detail. Your output should be in the form of a [recipe_list] of a different sheet of paper. Your "
    "output should also include at least 2 sentences. Your output should also include at least 2 photos. Your output "
    "should also include at least 2 words."
)
LOOP_KO = "정말 중요한 것은 매일 조금씩 하는 것입니다. " * 4


@pytest.mark.parametrize(
    "output, share, ngram, count",
    [
        (LOOP_EN, 0.619, "the most expensive", 3),
        (LOOP_EN_ACCEPTED, 0.313, "your output should", 6),
        (LOOP_KO, 0.731, "정말 중요한 것은", 4),
        ("Aerofloats, Aerofloats, Aerofloats. " * 5, 0.923, "aerofloats aerofloats aerofloats", 13),
    ],
)
def test_repetition_loop_drops(output, share, ngram, count):
    drop = RepetitionLoopCheck(0.3, 3).check(rec(output=output))
    assert evidence(drop) == {"reason": "repetition_loop", "repeated_share": share, "top_ngram": ngram, "top_ngram_count": count}


@pytest.mark.parametrize(
    "output",
    [
        "ha ha ha ha ha ha ha ha ha ha ha",  # 9 trigrams: too short to judge
        "def square(x):\n    return x * x\n\nprint(square(2))\nprint(square(3))\nprint(square(4))",
        "Warm rain on the roof, / the kettle starts to sing, / a cat dreams of spring. "
        "Warm rain on the roof, / the garden drinks its fill, / and the clock stands still.",
        # Tables and notation repeat symbols by nature; words are whitespace words, so "[0-9]" is one word.
        "| A | B | A XOR B |\n|---|---|---|\n| 0 | 0 | 0 |\n| 0 | 1 | 1 |\n| 1 | 0 | 1 |\n| 1 | 1 | 0 |",
        "^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$",
        "봄비가 창문을 두드리면 주전자가 노래를 시작하고, 고양이는 따뜻한 햇살을 꿈꾸며 조용히 잠이 듭니다. 정원은 물을 마시고 시계는 멈춥니다.",
    ],
)
def test_repetition_loop_keeps(output):
    assert RepetitionLoopCheck(0.3, 3).check(rec(output=output)) is None


def test_repetition_loop_threshold_and_n():
    # 12 trigrams, 6 distinct: share 0.5 exactly.
    output = "a b c d e f a b c d e f a b"
    assert RepetitionLoopCheck(0.5, 3).check(rec(output=output)) is None
    assert RepetitionLoopCheck(0.49, 3).check(rec(output=output)).evidence["repeated_share"] == 0.5
    # With n = 7 the same text repeats less (8 n-grams, too few to judge).
    assert RepetitionLoopCheck(0.3, 7).check(rec(output=output)) is None


# ---- placeholder_input ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "input, match",
    [
        ("[text]", "[text]"),
        ("<input>", "<input>"),
        ("{text}", "{text}"),
        ("...", "..."),
        ("…", "..."),  # matches are reported in NFKC form
        ("[insert text here]", "[insert text here]"),
        ("<text>", "<text>"),
        (" <your paragraph here> ", "<your paragraph here>"),
        ("[recipe_list]", "[recipe_list]"),
        ("[글]", "[글]"),
        ("[텍스트]", "[텍스트]"),
        ("<입력>", "<입력>"),
        ("<name>", "<name>"),
        ("Please review [your text] for errors.", "[your text]"),
        ("Summary: [Insert the article]", "[Insert the article]"),
        ("Proofread this: <insert text here>", "<insert text here>"),
        ("Email to the team:\n[paste your email here]", "[paste your email here]"),
        ("다음 글: [요약할 문단]", "[요약할 문단]"),
        ("[여기에 글을 입력하세요]", "[여기에 글을 입력하세요]"),
    ],
)
def test_placeholder_input_drops(input, match):
    assert evidence(PlaceholderInputCheck().check(rec(input=input))) == {"reason": "placeholder_input", "field": "input", "match": match}


@pytest.mark.parametrize(
    "input",
    [
        "arr[i] = arr[i - 1] + a[0]",
        "features[text] = clean(raw)",  # a slot word, but an index
        "Read [the article](https://example.com/news) first.",  # a slot word, but a markdown link
        'value = config["key"]',
        "See [the docs](https://example.com/docs) for details.",
        "[docs]: https://example.com/docs",
        "<p>Hello <b>world</b></p>",
        "<div>",
        "[1, 2, 3]",
        "He said [the president] would not attend.",
        "git clone <url>",
        'print(f"Hello {name}")',
        "- [ ] buy milk\n- [x] call mom",
        "[Chorus] We will rock you",
        "Wait... what happened next?",
        "[국제발신] 고객님의 택배가 주소 불일치로 반송 예정입니다.",
        "[속보] 서울에 첫눈이 내렸습니다.",
        # Slots for a detail in otherwise real material: genuine human-written tasks carry them.
        "Dear [name], thank you for your order of 3 lamps.",
        "Sincerely,\n[Your Name]",
        "Hello <your name>, welcome aboard.",
        "[회사명]의 신제품을 소개합니다.",
        "안녕하세요, [이름]님. 주문해 주셔서 감사합니다.",
        "..... are better at math.",  # a fill-in blank, not a whole-input ellipsis
        "x = [1, 2, 3]\ny = x\ny.append(4)",
    ],
)
def test_placeholder_input_keeps(input):
    assert PlaceholderInputCheck().check(rec(input=input)) is None


# ---- the checks together -------------------------------------------------------------------------------------------
def test_build_format_checks_order_and_switches():
    assert build_format_checks(FormatChecksConfig()) == []  # off by default
    assert build_format_checks(FormatChecksConfig(enabled=False, leaked_labels=True)) == []
    assert [s.name for s in ALL_CHECKS] == ["leaked_label", "label_prefix", "echoed_output", "repetition_loop", "placeholder_input"]
    some = build_format_checks(FormatChecksConfig(enabled=True, leaked_labels=False, echoed_output=False,
                                                  max_repeated_ngram_share=1, placeholder_input=False))
    assert [s.name for s in some] == ["label_prefix"]
    loop = build_format_checks(FormatChecksConfig(enabled=True, max_repeated_ngram_share=0.5, repetition_ngram=2))[3]
    assert isinstance(loop, RepetitionLoopCheck) and (loop.max_share, loop.n) == (0.5, 2)


def test_chain_rejected_line_carries_reason_and_evidence():
    chain = CurationChain(ALL_CHECKS)
    record = rec("3. Instructions for a new hire in a non-technical way", "", "A note.")
    step, drop = chain.check(record)
    line = record.rejected_dict(drop, step.name)
    assert json.loads(json.dumps(line))["field"] == "instruction"
    assert (line["reason"], line["step"], line["match"]) == ("leaked_label", "leaked_label", "3. Instructions")
    # Evidence never overwrites the record's own fields.
    for check, record in [(LeakedLabelCheck(), rec(output="Output: 25")), (LabelPrefixCheck(), rec("Q: Why?")),
                          (EchoedOutputCheck(), rec("Explain why the sky is blue.", "", "Explain why the sky is blue.")),
                          (RepetitionLoopCheck(0.3), rec(output=LOOP_EN)), (PlaceholderInputCheck(), rec(input="[text]"))]:
        drop = check.check(record)
        assert drop is not None and drop.reason == check.name
        assert not set(drop.evidence) & {"instruction", "input", "output", "reason", "detail", "step", "request_index", "candidate_index"}


def test_no_check_drops_a_seed_task():
    offenders = []
    for name in ("seed_tasks.jsonl", "seed_tasks_ko.jsonl"):
        for task in load_seeds(PROJECT_ROOT / "seeds" / name):
            for instance in task.instances:
                record = rec(task.instruction, instance.input, instance.output)
                offenders += [(task.id, step.name, step.check(record).detail) for step in ALL_CHECKS if step.check(record)]
    assert offenders == []
