"""RunStore: commit points, recovery of uncommitted bytes, locking, atomic run.json."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from pipeline import PROJECT_ROOT
from pipeline.store import (
    ACCEPTED,
    LOCK,
    REJECTED,
    RUN_JSON,
    RunDirectoryError,
    RunLockedError,
    RunStore,
)
from pipeline.files import read_jsonl, write_json_atomic

A1 = {"instruction": "Name a colour.", "output": "Red"}
A2 = {"instruction": "Name a fruit.", "output": "Apple", "note": "사과"}
R1 = {"reason": "too_short", "instruction": "Hi."}


def committed_store(run_dir) -> dict:
    with RunStore(run_dir) as store:
        store.append([A1, A2], [R1])
        store.commit(5, counts={"accepted": 2})
        return json.loads((run_dir / RUN_JSON).read_text())


def test_new_directory(tmp_path):
    run_dir = tmp_path / "a" / "run"
    store = RunStore(run_dir)
    assert store.open() == {}
    assert store.resumed is False
    store.close()
    assert (run_dir / ACCEPTED).read_bytes() == b""
    assert (run_dir / LOCK).read_bytes() == b""  # released lock leaves no holder behind


def test_commit_then_reopen_returns_committed_meta(tmp_path):
    meta = committed_store(tmp_path)
    progress = meta["progress"]
    assert progress["next_request_index"] == 5
    assert progress["accepted_bytes"] == (tmp_path / ACCEPTED).stat().st_size > 0
    assert progress["rejected_bytes"] == (tmp_path / REJECTED).stat().st_size > 0
    with RunStore(tmp_path) as store:
        assert store.resumed is True
        assert store.meta == meta
        assert list(store.accepted_records()) == [A1, A2]
        assert list(read_jsonl(tmp_path / REJECTED)) == [R1]


def test_open_returns_a_copy(tmp_path):
    committed_store(tmp_path)
    store = RunStore(tmp_path)
    meta = store.open()
    meta["counts"]["accepted"] = 99
    assert store.meta["counts"]["accepted"] == 2
    store.close()


def test_commit_after_reopen_without_appends_keeps_lengths(tmp_path):
    committed_store(tmp_path)
    size = (tmp_path / ACCEPTED).stat().st_size
    with RunStore(tmp_path) as store:
        store.commit(6)
        assert store.meta["progress"]["accepted_bytes"] == size
        assert store.meta["counts"] == {"accepted": 2}  # sections not passed are kept


def test_update_meta_does_not_move_commit_point(tmp_path):
    committed_store(tmp_path)
    with RunStore(tmp_path) as store:
        store.append([A1], [])
        store.update_meta(status="failed")
    with RunStore(tmp_path) as store:
        assert store.meta["status"] == "failed"
        assert list(store.accepted_records()) == [A1, A2]


def test_uncommitted_bytes_are_truncated(tmp_path, caplog):
    committed_store(tmp_path)
    committed_acc = (tmp_path / ACCEPTED).read_bytes()
    committed_rej = (tmp_path / REJECTED).read_bytes()
    with open(tmp_path / ACCEPTED, "ab") as f:
        f.write(b'{"instruction": "extra full line", "output": "x"}\n{"instruction": "torn par')
    with open(tmp_path / REJECTED, "ab") as f:
        f.write(json.dumps(R1).encode() + b"\n")
    with caplog.at_level(logging.WARNING, logger="pipeline.store"):
        with RunStore(tmp_path) as store:
            assert list(store.accepted_records()) == [A1, A2]
            store.append([A1], [])
            store.commit(6)
    assert "uncommitted bytes" in caplog.text
    assert (tmp_path / ACCEPTED).read_bytes() == committed_acc + json.dumps(A1).encode() + b"\n"
    assert (tmp_path / REJECTED).read_bytes() == committed_rej


def test_append_without_commit_is_lost_on_reopen(tmp_path):
    committed_store(tmp_path)
    store = RunStore(tmp_path)
    store.open()
    store.append([{"instruction": "lost"}], [{"reason": "lost"}])
    store.close()  # no commit: the records after the commit point are redone on resume
    with RunStore(tmp_path) as store:
        assert list(store.accepted_records()) == [A1, A2]
        assert list(read_jsonl(tmp_path / REJECTED)) == [R1]


def test_file_shorter_than_committed_raises(tmp_path):
    committed_store(tmp_path)
    data = (tmp_path / ACCEPTED).read_bytes()
    (tmp_path / ACCEPTED).write_bytes(data[:-3])
    with pytest.raises(RunDirectoryError, match="committed"):
        RunStore(tmp_path).open()
    # The failed open released its lock: once repaired, the directory opens again in this process.
    (tmp_path / ACCEPTED).write_bytes(data)
    with RunStore(tmp_path) as store:
        assert list(store.accepted_records()) == [A1, A2]


def test_unreadable_run_json_raises(tmp_path):
    committed_store(tmp_path)
    (tmp_path / RUN_JSON).write_text("{not json")
    with pytest.raises(RunDirectoryError, match="unreadable"):
        RunStore(tmp_path).open()
    (tmp_path / RUN_JSON).unlink()
    RunStore(tmp_path).open()  # not locked by the failed attempt


def test_output_path_under_a_file_is_not_writable(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirectoryError, match="not writable"):
        RunStore(tmp_path / "file" / "run").open()


def test_second_store_in_same_process_is_locked(tmp_path):
    first = RunStore(tmp_path)
    first.open()
    try:
        with pytest.raises(RunLockedError) as info:
            RunStore(tmp_path).open()
        assert f"pid={os.getpid()}" in str(info.value)
    finally:
        first.close()
    with RunStore(tmp_path):
        pass  # free again after close


def test_lock_held_by_another_process(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys, time
        from pipeline.store import RunStore
        store = RunStore({str(tmp_path)!r})
        store.open()
        print("locked", flush=True)
        sys.stdin.read()  # hold the lock until the test closes stdin
        store.close()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError) as info:
            RunStore(tmp_path).open()
        assert f"pid={proc.pid}" in str(info.value)
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    with RunStore(tmp_path):
        pass  # released when the other process closed it


def test_lock_of_killed_process_is_taken_over(tmp_path, caplog):
    code = f"from pipeline.store import RunStore; import os; RunStore({str(tmp_path)!r}).open(); print(os.getpid(), flush=True); os._exit(0)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60)
    dead = int(out.stdout.strip())
    assert (tmp_path / LOCK).read_text().startswith(f"pid={dead} ")  # a crash leaves the holder's line behind
    with caplog.at_level(logging.WARNING, logger="pipeline.store"):
        with RunStore(tmp_path):
            assert (tmp_path / LOCK).read_text().startswith(f"pid={os.getpid()} ")
    assert "stale lock" in caplog.text and f"pid={dead}" in caplog.text


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_lock_file_is_taken_over_with_warning(tmp_path, caplog):
    pid = dead_pid()
    (tmp_path / LOCK).write_text(f"pid={pid} host=x\n")
    with caplog.at_level(logging.WARNING, logger="pipeline.store"):
        store = RunStore(tmp_path)
        store.open()
    try:
        records = [r for r in caplog.records if r.name == "pipeline.store" and "stale lock" in r.getMessage()]
        assert len(records) == 1 and f"pid={pid} host=x" in records[0].getMessage()
        assert (tmp_path / LOCK).read_text().startswith(f"pid={os.getpid()} host=")
    finally:
        store.close()


def test_no_warning_without_previous_holder(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.store"):
        with RunStore(tmp_path):
            pass
        with RunStore(tmp_path):
            pass
    assert "stale" not in caplog.text


def test_write_json_atomic_leaves_no_temp_files(tmp_path):
    path = tmp_path / "run.json"
    write_json_atomic(path, {"a": 1, "k": "한글"})
    write_json_atomic(path, {"a": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": 2}


def test_write_json_atomic_failure_keeps_old_file(tmp_path):
    path = tmp_path / "run.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
    assert json.loads(path.read_text()) == {"a": 1}


def test_commit_leaves_no_temp_files(tmp_path):
    committed_store(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ACCEPTED, REJECTED, RUN_JSON, LOCK])


def test_open_removes_a_run_json_left_under_its_temporary_name(tmp_path):
    meta = committed_store(tmp_path)
    leftover = tmp_path / ".run.json.k1ll3d"  # what a kill between writing and renaming leaves
    leftover.write_text('{"progress": {"next_request_index": 99}}')
    with RunStore(tmp_path) as store:
        assert store.meta == meta
    assert not leftover.exists()


def test_atomic_writes_get_the_mode_open_would_give(tmp_path):
    """mkstemp creates 0600 files; a dataset written through it must be as readable as any file the user writes."""
    path = tmp_path / "alpaca_data.json"
    write_json_atomic(path, [])
    (tmp_path / "plain").write_text("x")
    assert path.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777


def test_buffered_appends_are_on_disk_at_each_commit_and_a_kill_keeps_the_last_commit(tmp_path):
    """append() only buffers (no write per request); commit() must still put every appended byte on disk before
    run.json names its length, and a process killed (no close, no flush) between commits resumes at the last one."""
    script = textwrap.dedent(f"""
        import json, os
        from pipeline.store import RunStore
        store = RunStore({str(tmp_path)!r})
        store.open()
        for i in range(3):
            store.append([{{"instruction": f"accepted {{i}}"}}], [{{"reason": f"rejected {{i}}"}}])
        store.commit(3)
        sizes = [os.path.getsize(os.path.join({str(tmp_path)!r}, n)) for n in ("accepted.jsonl", "rejected.jsonl")]
        meta = json.load(open(os.path.join({str(tmp_path)!r}, "run.json")))["progress"]
        assert sizes == [meta["accepted_bytes"], meta["rejected_bytes"]] and min(sizes) > 0, (sizes, meta)
        for i in range(3, 5):
            store.append([{{"instruction": f"accepted {{i}}"}}], [{{"reason": f"rejected {{i}}"}}])
        os.write(1, b"appended\\n")
        os._exit(9)  # a kill: buffers are neither flushed nor committed
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 9 and "appended" in result.stdout, result.stderr
    with RunStore(tmp_path) as store:
        meta = store.meta
        assert meta["progress"]["next_request_index"] == 3
        assert [r["instruction"] for r in store.accepted_records()] == ["accepted 0", "accepted 1", "accepted 2"]
        assert [r["reason"] for r in read_jsonl(tmp_path / REJECTED)] == ["rejected 0", "rejected 1", "rejected 2"]
        store.append([{"instruction": "accepted 3"}], [])
        store.commit(4)
    assert [r["instruction"] for r in read_jsonl(tmp_path / ACCEPTED)][-1] == "accepted 3"


def test_prepared_commit_moves_the_commit_point_only_when_written(tmp_path):
    """prepare_commit fixes the lengths and run.json content; appends after it lie past them and are cut on reopen
    unless a later commit covers them; run.json changes only at write_commit."""
    store = RunStore(tmp_path / "r")
    store.open()
    store.append([A1], [R1])
    prepared = store.prepare_commit(1, counts={"accepted": 1})
    store.append([A2], [])  # arrives while the prepared commit is being written
    assert not (tmp_path / "r" / RUN_JSON).exists()
    store.write_commit(prepared)
    store.close()
    store = RunStore(tmp_path / "r")
    meta = store.open()
    store.close()
    assert meta["progress"]["next_request_index"] == 1 and meta["counts"] == {"accepted": 1}
    assert list(read_jsonl(tmp_path / "r" / ACCEPTED)) == [A1]


def test_a_slow_disk_does_not_hold_up_requests(tmp_path, monkeypatch):
    """The commits made during a round fsync in a worker thread: with every fsync taking 0.1 s, requests go on being
    consumed while one runs, and the run still ends committed with every record on disk."""
    import threading
    import time

    from pipeline.generate import GenerationRun
    from pipeline.lifecycle import run_rounds
    from tests.test_run_paths import ScriptedOpenAI, fresh_tasks, make_config, read_meta, structured

    real_fsync = os.fsync
    progress_during_background_fsyncs: list[int] = []
    holder: dict[str, GenerationRun] = {}

    def slow_fsync(fd):
        before = holder["run"].counts.requests if "run" in holder else 0
        time.sleep(0.1)
        real_fsync(fd)
        if threading.current_thread() is not threading.main_thread():
            progress_during_background_fsyncs.append(holder["run"].counts.requests - before)

    def answer(index, attempt):
        time.sleep(0.01)
        return structured(fresh_tasks(index))

    with ScriptedOpenAI(answer) as fake:
        config = make_config(tmp_path, fake.base_url, "slow-disk", target=120, max_requests=200, commit_interval_s=0.05)
        run = holder["run"] = GenerationRun(config).open()
        monkeypatch.setattr(os, "fsync", slow_fsync)
        try:
            result = run_rounds(run, [fake.base_url], None, None)
        finally:
            run.close()
    assert result.accepted == 120 and progress_during_background_fsyncs
    assert sum(progress_during_background_fsyncs) > 0  # the loop went on while the disk was busy
    meta = read_meta(config.run_dir)
    assert meta["progress"]["next_request_index"] == 60 and meta["counts"]["accepted"] == 120
    assert meta["progress"]["accepted_bytes"] == (config.run_dir / ACCEPTED).stat().st_size
    assert len(list(read_jsonl(config.run_dir / ACCEPTED))) == 120
