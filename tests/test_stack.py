"""The operated stack, as users run it: `flows/stack.sh up` (what `make up` calls), the Prefect CLI, `down`.

A real Prefect server and worker are started the way `make up` starts them (on a free port, with a private
PREFECT_HOME and PID directory), and the demo deployment runs a managed vLLM CPU server with the real demo model (SmolLM2).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml

from pipeline.server import free_port
from tests.conftest import PROJECT_ROOT, _require_vllm, server_processes

pytestmark = [pytest.mark.vllm, pytest.mark.prefect, pytest.mark.slow]

PREFECT = str(PROJECT_ROOT / ".venv" / "bin" / "prefect")
EXPECTED_DEPLOYMENTS = {"self-instruct/default", "self-instruct/koalpaca", "self-instruct/demo",
                        "train-alpaca/default", "train-alpaca/koalpaca"}


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _tree(pid: int) -> list[psutil.Process]:
    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    _require_vllm()
    root = tmp_path_factory.mktemp("stack")
    for attempt in range(3):  # a free port can be taken by another process before the server binds it
        port = free_port()
        env = {**os.environ, "PREFECT_PORT": str(port), "PREFECT_HOME": str(root / "prefect-home"),
               "SELFINSTRUCT_RUN_DIR": str(root / "run"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
        up = subprocess.run([str(PROJECT_ROOT / "flows" / "stack.sh"), "up"], env=env, capture_output=True, text=True,
                            timeout=400, cwd=PROJECT_ROOT)
        server_log = root / "run" / "server.log"
        if up.returncode == 0 or "address already in use" not in (server_log.read_text() if server_log.exists() else ""):
            break
        subprocess.run([str(PROJECT_ROOT / "flows" / "stack.sh"), "down"], env=env, capture_output=True, timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"http://127.0.0.1:{port}" in up.stderr
    pids = [int((root / "run" / f"{name}.pid").read_text()) for name in ("server", "worker")]
    state = {"env": env, "root": root, "processes": []}
    yield state
    started = [p for pid in pids for p in _tree(pid)] + state["processes"]
    down = subprocess.run([str(PROJECT_ROOT / "flows" / "stack.sh"), "down"], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 30  # `down` signals and returns; give the processes time to exit, no more
    while (left := [p for p in started if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"left running after `down`: {[(p.pid, p.cmdline()[:4]) for p in left]}"


def prefect(stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PREFECT, *args], env=stack["env"], capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT)


def demo_config(stack, model: Path, run_name: str, target: int) -> dict:
    """The demo deployment's own parameters, pointed at a private output dir and a private path to its model."""
    spec = yaml.safe_load((PROJECT_ROOT / "flows" / "prefect.yaml").read_text())
    config = next(d for d in spec["deployments"] if d["name"] == "demo")["parameters"]["config"]
    assert config["llm"]["model"] == "outputs/_models/smollm2-135m-instruct"
    private = stack["root"] / f"model-{run_name}"  # only this run's server names this path
    if not private.exists():
        private.symlink_to(model, target_is_directory=True)
    config = json.loads(json.dumps(config))
    config.update(run_name=run_name, output_dir=str(stack["root"] / "outputs"), target=target)
    config["llm"]["model"] = str(private)
    return config


def test_up_deploys_everything_with_a_paused_nightly_schedule(stack):
    listing = prefect(stack, "deployment", "ls")
    assert listing.returncode == 0, listing.stderr
    for name in EXPECTED_DEPLOYMENTS:
        assert name in listing.stdout, f"{name} missing from\n{listing.stdout}"
    schedules = prefect(stack, "deployment", "schedule", "ls", "self-instruct/default")
    assert schedules.returncode == 0, schedules.stderr
    assert "0 3 * * *" in schedules.stdout
    # The README's promise, read from the API: exactly the nightly cron, created paused; likewise for koalpaca.
    for name, cron in (("self-instruct/default", "0 3 * * *"), ("self-instruct/koalpaca", "30 3 * * *")):
        deployment = asyncio.run(_read_deployment(stack["env"]["PREFECT_API_URL"], name))
        assert [(s.schedule.cron, s.active) for s in deployment.schedules] == [(cron, False)], deployment.schedules


def test_bad_parameter_is_refused_naming_the_field(stack):
    refused = prefect(stack, "deployment", "run", "self-instruct/demo", "--param", 'config={"target": -5}')
    assert refused.returncode != 0
    assert "config.target" in refused.stdout + refused.stderr


async def _read_deployment(api_url: str, name: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        async with get_client() as client:
            return await client.read_deployment_by_name(name)


async def _read_artifacts(api_url: str, prefix: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # Explicitly this stack's server: a session-wide Prefect test harness may be active in the same process.
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=prefix)))


def test_demo_deployment_runs_to_completion_and_publishes_artifacts(stack, smollm2):
    config = demo_config(stack, smollm2, "stackdemo", target=6)
    run = prefect(stack, "deployment", "run", "self-instruct/demo", "--param", f"config={json.dumps(config)}", "--watch",
                  timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Completed" in run.stdout
    dataset = stack["root"] / "outputs" / "stackdemo" / "alpaca_data.json"
    assert len(json.loads(dataset.read_text())) >= config["target"]

    artifacts = {a.key for a in asyncio.run(_read_artifacts(stack["env"]["PREFECT_API_URL"], "stackdemo-%"))}
    for suffix in ("summary", "report", "funnel", "figures", "verbs", "samples", "rejected", "rejection-reasons", "lengths", "dataset", "progress"):
        assert f"stackdemo-{suffix}" in artifacts


def test_koalpaca_deployment_runs_korean_against_an_external_server(stack):
    """`self-instruct/koalpaca` as deployed (Korean prompt, Kiwi dedup), pointed at the Korean fake server.

    The fake answers each request index with test_korean_e2e's script, so the accepted set is known exactly.
    """
    from pipeline.config import GenerationConfig
    from pipeline.generate import GenerationRun
    from tests.test_korean_e2e import EXPECTED_ACCEPTED, SCRIPT, TASKS, KoreanFakeOpenAI

    spec = yaml.safe_load((PROJECT_ROOT / "flows" / "prefect.yaml").read_text())
    deployed = next(d for d in spec["deployments"] if d["name"] == "koalpaca" and d["entrypoint"].startswith("flows/self_instruct"))
    config = json.loads(json.dumps(deployed["parameters"]["config"]))
    assert config["language"] == "ko"
    config.update(run_name="stackko", output_dir=str(stack["root"] / "outputs"), target=len(EXPECTED_ACCEPTED),
                  tasks_per_request=TASKS, max_requests=len(SCRIPT))
    config["llm"].update(model="fake-ko", max_concurrency=4, request_timeout_s=30, max_retries=2)
    builder = GenerationRun(GenerationConfig(**{**config, "llm": {**config["llm"], "base_urls": ["http://unused/v1"]}})).builder
    seed_to_index = {builder.render(i).sampling_seed: i for i in range(len(SCRIPT))}
    with KoreanFakeOpenAI(seed_to_index, SCRIPT) as fake:
        config["llm"]["base_urls"] = [fake.base_url]
        run = prefect(stack, "deployment", "run", "self-instruct/koalpaca", "--param", f"config={json.dumps(config)}", "--watch",
                      timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Completed" in run.stdout
    assert sorted(fake.requests) == list(range(len(SCRIPT)))
    assert all("한국어 지시문 데이터셋" in body["messages"][0]["content"] for body in fake.requests.values())
    run_dir = stack["root"] / "outputs" / "stackko"
    dataset = json.loads((run_dir / "alpaca_data.json").read_text(encoding="utf-8"))
    assert [r["instruction"] for r in dataset] == EXPECTED_ACCEPTED
    meta = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    assert meta["status"] == "completed" and meta["config"]["language"] == "ko"
    assert meta["counts"]["rejected"]["rouge_similar"] == 5
    artifacts = {a.key for a in asyncio.run(_read_artifacts(stack["env"]["PREFECT_API_URL"], "stackko-%"))}
    assert {"stackko-summary", "stackko-rejected", "stackko-report", "stackko-verbs"} <= artifacts


def test_cancelling_a_run_stops_its_vllm_server(stack, smollm2):
    config = demo_config(stack, smollm2, "stackcancel", target=100000)  # long enough to be cancelled mid-run
    started = prefect(stack, "deployment", "run", "self-instruct/demo", "--param", f"config={json.dumps(config)}")
    assert started.returncode == 0, started.stderr
    flow_run_id = next(line.split()[-1] for line in started.stdout.splitlines() if "UUID" in line)
    model = Path(config["llm"]["model"])
    groups: set[int] = set()  # the server's process groups: its engine core and workers name no model
    deadline = time.monotonic() + 600
    while not server_processes(model, groups) and time.monotonic() < deadline:
        time.sleep(2)
    servers = server_processes(model, groups)
    assert servers, "the flow run never started its vLLM server"
    stack["processes"].extend(servers)
    time.sleep(5)

    cancel = prefect(stack, "flow-run", "cancel", flow_run_id)
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    cancelled_at = time.monotonic()
    while server_processes(model, groups) and time.monotonic() - cancelled_at < 30:
        time.sleep(1)
    assert not server_processes(model, groups), "vLLM still running 30 s after the cancel"
    state = ""
    while time.monotonic() - cancelled_at < 60:
        state = prefect(stack, "flow-run", "inspect", flow_run_id).stdout
        if "CANCELLED" in state:
            break
        time.sleep(2)
    assert "CANCELLED" in state
