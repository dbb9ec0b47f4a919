"""The CLI on bad input: exit 2 with FILE:LINE: field: message, before anything is written or sent.

Runs ``pipeline.cli.main`` in-process (plus a few real subprocess runs of the installed ``selfinstruct``).
Every ``generate`` call that must fail early points ``--base-url`` at a TCP socket the test listens on and
then asserts that nothing connected to it: the input was refused before any LLM call. A run that fails part-way,
and a resume with a changed config, run against the scripted fake server of ``tests/test_run_paths.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pipeline import PROJECT_ROOT
from pipeline.cli import main
from pipeline.config import GenerationConfig

SELFINSTRUCT = PROJECT_ROOT / ".venv" / "bin" / "selfinstruct"
SECRET = "sk-test-SECRET"


def task(id_: str, **changes) -> dict:
    data = {"id": id_, "name": "n", "instruction": f"Explain topic {id_} to a ten year old child.",
            "instances": [{"input": "", "output": "An explanation."}], "is_classification": False}
    data.update(changes)
    return data


def jl(data) -> str:
    return json.dumps(data, ensure_ascii=False)


def _missing(field: str) -> dict:
    data = task("m")
    del data[field]
    return data


GOOD_LINES = [jl(task(f"t{i}")) for i in range(4)]

#: name -> (file bytes, expected "LINE: field" of each problem)
BAD_SEEDS: dict[str, tuple[bytes, list[str]]] = {
    "invalid_json": (("\n".join(GOOD_LINES[:2] + ['{"id": "x",'] + GOOD_LINES[2:]) + "\n").encode(), ["3: json"]),
    "missing_instances": (("\n".join(GOOD_LINES + [jl(_missing("instances"))]) + "\n").encode(), ["5: instances"]),
    "missing_instruction": (("\n".join([jl(_missing("instruction"))] + GOOD_LINES) + "\n").encode(), ["1: instruction"]),
    "empty_instruction": (("\n".join(GOOD_LINES + [jl(task("e", instruction=" "))]) + "\n").encode(), ["5: instruction"]),
    "empty_output": (
        ("\n".join(GOOD_LINES + [jl(task("e", instances=[{"input": "", "output": ""}]))]) + "\n").encode(),
        ["5: instances.0.output"],
    ),
    "duplicate_id": (("\n".join(GOOD_LINES + [GOOD_LINES[1]]) + "\n").encode(), ["5: id"]),
    "not_utf8": (("\n".join(GOOD_LINES) + "\n").encode() + b'{"id": "caf\xe9"}\n', ["5: encoding"]),
    "huge_line": (("\n".join(GOOD_LINES[:1] + [jl(task("big", instruction="x" * 10_000_000))]) + "\n").encode(), ["2: line"]),
    "empty_file": (b"", ["0: file"]),
    "non_object": (("\n".join(GOOD_LINES + ["[1, 2, 3]"]) + "\n").encode(), ["5: json"]),
    "several": (("\n".join(["nope", GOOD_LINES[0], jl(_missing("instances")), GOOD_LINES[0]]) + "\n").encode(),
                ["1: json", "3: instances", "4: id"]),
}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cwd(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def listener():
    """A local 'LLM endpoint' that records whether anything connected to it."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.setblocking(False)

    class Endpoint:
        url = f"http://127.0.0.1:{srv.getsockname()[1]}/v1"

        @staticmethod
        def connections() -> int:
            n = 0
            while True:
                try:
                    conn, _ = srv.accept()
                except BlockingIOError:
                    return n
                conn.close()
                n += 1

    yield Endpoint
    srv.close()


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/v1"


def write_seeds(path: Path, name: str) -> Path:
    path.write_bytes(BAD_SEEDS[name][0])
    return path


def assert_nothing_written(out_dir: Path) -> None:
    assert not out_dir.exists() or not any(out_dir.iterdir()), sorted(map(str, out_dir.rglob("*")))


# ---- validate-seeds ---------------------------------------------------------------------------------------------------
def test_validate_repository_seeds(cwd, capsys):
    code, out, err = run(capsys, "validate-seeds", str(PROJECT_ROOT / "seeds" / "seed_tasks.jsonl"),
                         str(PROJECT_ROOT / "seeds" / "seed_tasks_ko.jsonl"))
    assert code == 0, err
    assert err == ""
    assert "seed_tasks.jsonl: " in out and "seed_tasks_ko.jsonl: " in out


def test_validate_valid_file(cwd, capsys):
    (cwd / "ok.jsonl").write_text("\n".join(GOOD_LINES) + "\n")
    code, out, err = run(capsys, "validate-seeds", "ok.jsonl")
    assert (code, err) == (0, "")
    assert out.startswith("ok.jsonl: 4 seed tasks")


@pytest.mark.parametrize("case", sorted(BAD_SEEDS))
def test_validate_bad_seeds(cwd, capsys, case):
    write_seeds(cwd / "bad.jsonl", case)
    code, out, err = run(capsys, "validate-seeds", "bad.jsonl")
    assert code == 2
    lines = err.strip().splitlines()
    expected = BAD_SEEDS[case][1]
    assert len(lines) == len(expected), err
    for line, where in zip(lines, expected):
        assert line.startswith(f"bad.jsonl:{where}: "), line
        assert len(line) > len(f"bad.jsonl:{where}: ") + 3  # a message follows
    assert out == ""


def test_validate_reports_every_file(cwd, capsys):
    (cwd / "ok.jsonl").write_text("\n".join(GOOD_LINES) + "\n")
    write_seeds(cwd / "bad.jsonl", "invalid_json")
    code, out, err = run(capsys, "validate-seeds", "bad.jsonl", "ok.jsonl", "missing.jsonl")
    assert code == 2
    assert "ok.jsonl: 4 seed tasks" in out
    assert err.splitlines()[0].startswith("bad.jsonl:3: json: ")
    assert err.splitlines()[1] == "missing.jsonl:0: file: not found"


# ---- generate: bad seeds ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(BAD_SEEDS))
def test_generate_bad_seeds_writes_nothing(cwd, capsys, listener, case):
    write_seeds(cwd / "bad.jsonl", case)
    code, out, err = run(capsys, "generate", "--seeds", "bad.jsonl", "--output-dir", "out", "--base-url", listener.url)
    assert code == 2
    first = BAD_SEEDS[case][1][0]
    assert err.splitlines()[0].startswith(f"bad.jsonl:{first}: ")
    assert "Traceback" not in err
    assert_nothing_written(cwd / "out")
    assert listener.connections() == 0


def test_generate_too_few_seeds(cwd, capsys, listener):
    (cwd / "two.jsonl").write_text("\n".join(GOOD_LINES[:2]) + "\n")
    code, _, err = run(capsys, "generate", "--seeds", "two.jsonl", "--output-dir", "out", "--base-url", listener.url)
    assert code == 2
    assert "num_seed_examples" in err and "Traceback" not in err
    assert_nothing_written(cwd / "out")
    assert listener.connections() == 0


# ---- generate: config ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, field",
    [
        (["--target", "-5"], "target"),
        (["--target", "0"], "target"),
        (["--concurrency", "0"], "llm.max_concurrency"),
        (["--run-name", "../x"], "run_name"),
        (["--run-name", "a/b"], "run_name"),
        (["--run-name", ".."], "run_name"),
        (["--run-name", "a\\b"], "run_name"),
        (["--run-name", ""], "run_name"),
    ],
)
def test_generate_bad_arguments(cwd, capsys, listener, args, field):
    code, _, err = run(capsys, "generate", "--output-dir", "out", "--base-url", listener.url, *args)
    assert code == 2
    assert f"command line: {field}: " in err
    assert_nothing_written(cwd / "out")
    assert not (cwd / "x").exists() and not (cwd / "a").exists()
    assert listener.connections() == 0


@pytest.mark.parametrize(
    "yaml_text, needle",
    [
        ("llm: {max_concurrency: 0}\n", "cfg.yaml: llm.max_concurrency: "),
        ("llm: {temperature: 3}\n", "cfg.yaml: llm.temperature: "),
        ("dedup: {threshold: 1.5}\n", "cfg.yaml: dedup.threshold: "),
        # RougeDedup rejects 0: it used to pass validation, lock the run directory and fail with a traceback.
        ("dedup: {threshold: 0}\n", "cfg.yaml: dedup.threshold: Input should be greater than 0"),
        ("num_seed_examples: 0\n", "cfg.yaml: num_seed_examples: "),
        ("language: fr\n", "cfg.yaml: language: "),
        ("tagret: 10\n", "cfg.yaml: tagret: Extra inputs are not permitted"),
        ("llm: {modle: x}\n", "cfg.yaml: llm.modle: Extra inputs are not permitted"),
        ("filters: {min_instruction_words: 10, max_instruction_words: 5}\n", "min_instruction_words"),
        ("run_name: ../escape\n", "cfg.yaml: run_name: "),
        ("llm: [1, 2\n", "cfg.yaml: invalid YAML"),
        ("- a\n- b\n", "cfg.yaml: the config must be a mapping"),
    ],
)
def test_generate_bad_yaml(cwd, capsys, listener, yaml_text, needle):
    (cwd / "cfg.yaml").write_text(yaml_text)
    code, _, err = run(capsys, "generate", "--config", "cfg.yaml", "--output-dir", "out", "--base-url", listener.url)
    assert code == 2
    assert needle in err
    assert_nothing_written(cwd / "out")
    assert not (cwd / "escape").exists()
    assert listener.connections() == 0


def test_generate_missing_config_file(cwd, capsys, listener):
    code, _, err = run(capsys, "generate", "--config", "nope.yaml", "--output-dir", "out", "--base-url", listener.url)
    assert code == 2
    assert "nope.yaml: cannot read config" in err
    assert_nothing_written(cwd / "out")


def test_generate_unknown_prompt_template(cwd, capsys, listener):
    (cwd / "cfg.yaml").write_text("prompt_template: no_such_template\n")
    code, _, err = run(capsys, "generate", "--config", "cfg.yaml", "--output-dir", "out", "--base-url", listener.url)
    assert code == 2
    assert "prompt_template" in err and "no_such_template" in err
    assert_nothing_written(cwd / "out")
    assert listener.connections() == 0


def test_generate_broken_prompt_template(cwd, capsys, listener):
    (cwd / "broken.jinja").write_text("{% if %}\n")
    (cwd / "cfg.yaml").write_text("prompt_template: broken.jinja\n")
    code, _, err = run(capsys, "generate", "--config", "cfg.yaml", "--output-dir", "out", "--base-url", listener.url)
    assert code == 2
    assert "broken.jinja:1: template syntax error" in err
    assert_nothing_written(cwd / "out")
    assert listener.connections() == 0


def test_generate_template_with_undefined_variable(cwd, capsys, listener):
    (cwd / "typo.jinja").write_text("Write {{ num_taks }} tasks.\n")
    (cwd / "cfg.yaml").write_text("prompt_template: typo.jinja\n")
    code, _, err = run(capsys, "generate", "--config", "cfg.yaml", "--output-dir", "out", "--base-url", listener.url)
    assert code == 2
    assert "typo.jinja" in err and "num_taks" in err and "Traceback" not in err
    assert_nothing_written(cwd / "out")
    assert listener.connections() == 0


# ---- generate: output directory ---------------------------------------------------------------------------------------
def test_output_dir_under_a_file(cwd, capsys, listener):
    # Tests run as root, which ignores directory permissions (chmod 0o500 does not stop it), so the unwritable
    # output directory is a path below a regular file: mkdir fails with ENOTDIR for root too.
    (cwd / "some_file").write_text("not a directory")
    code, out, err = run(capsys, "generate", "--output-dir", "some_file/sub", "--base-url", listener.url)
    assert code == 2
    assert "some_file/sub/default" in err and "not writable" in err
    assert (cwd / "some_file").read_text() == "not a directory"
    assert listener.connections() == 0


def test_run_directory_in_use(cwd, capsys, listener):
    from pipeline.store import RunStore

    with RunStore(cwd / "out" / "busy"):
        code, _, err = run(capsys, "generate", "--output-dir", "out", "--run-name", "busy", "--base-url", listener.url)
    assert code == 2
    assert "in use" in err and f"pid={os.getpid()}" in err
    assert listener.connections() == 0


# ---- generate: unreachable endpoint, resume, secrets ----------------------------------------------------------------
def test_public_dict_masks_api_key():
    config = GenerationConfig.from_dict({"llm": {"api_key": SECRET}})
    assert config.llm.api_key.get_secret_value() == SECRET
    public = config.public_dict()
    assert public["llm"]["api_key"] != SECRET
    assert SECRET not in json.dumps(public)
    assert SECRET not in repr(config) and SECRET not in str(config.llm)


def test_unreachable_endpoint_fails_resumably_without_leaking_secret(cwd, capsys):
    (cwd / "cfg.yaml").write_text(
        f"llm: {{max_retries: 2, backoff_initial_s: 0.05, backoff_max_s: 0.1, max_concurrency: 4, api_key: {SECRET}}}\n"
    )
    url = closed_port_url()
    argv = ["generate", "--config", "cfg.yaml", "--output-dir", "out", "--run-name", "r1", "--target", "5", "--base-url", url]
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert "failed after 2 retries" in err
    assert "kept" in err and "resume" in err
    assert "Traceback" not in err

    run_json = json.loads((cwd / "out" / "r1" / "run.json").read_text())
    assert run_json["status"] == "failed"
    assert "failed after 2 retries" in run_json["error"]
    assert run_json["config"]["llm"]["api_key"] != SECRET
    assert run_json["progress"]["next_request_index"] == 0

    files = [p for p in (cwd / "out").rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in out + err


def test_run_failing_part_way_resumes_with_the_same_command(cwd, capsys):
    """A live server that fails request 3 (HTTP 500 on every attempt): the run fails with exit 1 after requests
    0-2 are kept. The same command, once the server answers again, resumes at request 3, keeps the earlier
    records byte for byte, completes, and ends with the same records as an uninterrupted run.

    Request 2 answers late, after request 3 has failed for good: the run still keeps it, because a failed request
    fails the run only when every earlier index has been consumed."""
    from tests.test_run_paths import ScriptedOpenAI, fresh_tasks, structured

    failing = {"on": True}
    request_3_failed = threading.Event()

    def answer(index: int, attempt: int) -> tuple[int, str]:
        if failing["on"] and index == 3:
            if attempt == 3:
                request_3_failed.set()
            return 500, "engine died"
        if failing["on"] and index == 2:
            request_3_failed.wait(30)
            time.sleep(0.2)  # the client has had request 3's last answer for a while
        return structured(fresh_tasks(index))

    (cwd / "cfg.yaml").write_text(
        f"llm: {{max_retries: 2, backoff_initial_s: 0.05, backoff_max_s: 0.1, max_concurrency: 2, api_key: {SECRET}}}\n"
        "tasks_per_request: 2\nexport: {hf_dataset: false, charts: false}\n"
    )
    with ScriptedOpenAI(answer) as fake:
        argv = ["generate", "--config", "cfg.yaml", "--output-dir", "out", "--run-name", "r1", "--target", "10",
                "--base-url", fake.base_url]
        code, out, err = run(capsys, *argv)
        assert code == 1
        failure = f"request 3 failed after 2 retries: HTTP 500 from {fake.base_url}"
        assert f"error: {failure}\n" in err
        assert f"Completed records are kept in {Path('out/r1')}; run the same command again to resume." in err
        assert "Traceback" not in err
        run_dir = cwd / "out" / "r1"
        meta = json.loads((run_dir / "run.json").read_text())
        assert (meta["status"], meta["error"]) == ("failed", f"LLMUnavailableError: {failure}")
        assert meta["progress"]["next_request_index"] == 3 and meta["counts"]["accepted"] == 6
        kept = (run_dir / "accepted.jsonl").read_bytes()
        assert [(r["request_index"], r["candidate_index"]) for r in map(json.loads, kept.splitlines())] == [
            (i, k) for i in range(3) for k in range(2)
        ]
        assert [fake.attempts[i] for i in range(4)] == [1, 1, 1, 3]
        first_session = len(fake.received)

        failing["on"] = False
        code, out, err = run(capsys, *argv)
        assert code == 0, err
        assert out.splitlines()[0] == f"10 records (target reached) in {Path('out/r1')}"
        # It resumed where it stopped: nothing before request 3 was asked for again (up to max_concurrency = 2
        # requests past 4 may have been sent ahead, when 3 and 4 arrive together, and cancelled at the target).
        resumed = fake.indices(first_session)
        assert min(resumed) == 3 and {3, 4} <= set(resumed) <= {3, 4, 5, 6}, resumed
        final = (run_dir / "accepted.jsonl").read_bytes()
        assert final.startswith(kept) and len(final.splitlines()) == 10
        meta = json.loads((run_dir / "run.json").read_text())
        assert (meta["status"], meta["error"], meta["sessions"]) == ("completed", None, 2)
        assert meta["progress"]["next_request_index"] == 5 and meta["counts"]["requests"] == 5
        # The first session's faults survive the resume: request 3's three attempts, two of them retries.
        assert meta["faults"] == {"http_500": 3} and meta["usage"]["retries"] == 2

        # The same records as a run that never failed.
        reference = argv[:argv.index("--run-name") + 1] + ["ref"] + argv[argv.index("--run-name") + 2:]
        assert run(capsys, *reference)[0] == 0
        assert (cwd / "out" / "ref" / "accepted.jsonl").read_bytes() == final

        # The key was sent as the bearer token and written nowhere.
        assert {r.authorization for r in fake.received} == {f"Bearer {SECRET}"}
    for path in (p for p in (cwd / "out").rglob("*") if p.is_file()):
        assert SECRET.encode() not in path.read_bytes(), path


def test_changed_determinism_fields_are_refused_with_the_exact_message(cwd, capsys):
    """Resuming with a setting that shapes what a request produces is refused (exit 2) before any request, naming
    every changed field; settings that do not (concurrency, target, max_requests) resume."""
    from tests.test_run_paths import ScriptedOpenAI, fresh_tasks, structured

    (cwd / "seeds.jsonl").write_text("\n".join(GOOD_LINES) + "\n")
    (cwd / "cfg.yaml").write_text("llm: {max_concurrency: 2}\ntasks_per_request: 2\nexport: {hf_dataset: false, charts: false}\n")
    run_dir = cwd / "out" / "r1"
    with ScriptedOpenAI(lambda index, attempt: structured(fresh_tasks(index))) as fake:
        argv = ["generate", "--config", "cfg.yaml", "--seeds", "seeds.jsonl", "--output-dir", "out", "--run-name", "r1",
                "--target", "4", "--base-url", fake.base_url]
        assert run(capsys, *argv)[0] == 0
        sent = len(fake.received)
        files = {name: (run_dir / name).read_bytes() for name in ("run.json", "accepted.jsonl", "rejected.jsonl")}

        def refused(*extra: str) -> str:
            code, out, err = run(capsys, *argv, *extra)
            assert code == 2 and out == ""
            assert len(fake.received) == sent  # nothing was sent
            assert {name: (run_dir / name).read_bytes() for name in files} == files  # nothing was written
            return err.splitlines()[-1]

        def message(changed: str) -> str:
            return (f"{Path('out/r1')} was made with a different config ({changed} changed); resuming would mix two "
                    "datasets. Use a new run_name, or restore those settings.")

        assert refused("--seed", "7") == message("seed")
        assert refused("--no-dedup.enabled", "--llm.temperature", "0.5", "--seed", "7") == message(
            "dedup.enabled, llm.temperature, seed"
        )
        assert refused("--response-mode", "text", "--dedup.context-runs", "other") == message(
            "dedup.context_runs, response_mode"
        )
        # Another seed file changes the prompts.
        (cwd / "seeds.jsonl").write_text("\n".join(GOOD_LINES + [jl(task("t9"))]) + "\n")
        assert refused() == message("prompts_and_seeds")
        (cwd / "seeds.jsonl").write_text("\n".join(GOOD_LINES) + "\n")

        # Concurrency and target shape no request: the run resumes at request 2 and completes.
        code, out, err = run(capsys, *argv, "--target", "8", "--concurrency", "1")
        assert code == 0, err
        assert out.splitlines()[0] == f"8 records (target reached) in {Path('out/r1')}"
        assert min(fake.indices(sent)) == 2 and {2, 3} <= set(fake.indices(sent)) <= {2, 3, 4}
    meta = json.loads((run_dir / "run.json").read_text())
    assert (meta["status"], meta["sessions"], meta["progress"]["next_request_index"]) == ("completed", 2, 4)


# ---- real subprocess runs of the installed command ----------------------------------------------------------------
def test_installed_command_validate_seeds(tmp_path):
    write_seeds(tmp_path / "bad.jsonl", "several")
    (tmp_path / "ok.jsonl").write_text("\n".join(GOOD_LINES) + "\n")
    ok = subprocess.run([str(SELFINSTRUCT), "validate-seeds", "ok.jsonl"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([str(SELFINSTRUCT), "validate-seeds", "bad.jsonl"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert [l.split(": ")[0] for l in bad.stderr.splitlines()] == ["bad.jsonl:1", "bad.jsonl:3", "bad.jsonl:4"]


def test_installed_command_generate_bad_seeds(tmp_path, listener):
    write_seeds(tmp_path / "bad.jsonl", "empty_output")
    proc = subprocess.run(
        [str(SELFINSTRUCT), "generate", "--seeds", "bad.jsonl", "--output-dir", "out", "--base-url", listener.url],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("bad.jsonl:5: instances.0.output: ")
    assert_nothing_written(tmp_path / "out")
    assert listener.connections() == 0
