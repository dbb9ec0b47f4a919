"""ManagedServer start-up and shut-down paths, against a stand-in server process (no vLLM needed).

The stand-in takes vLLM's ``--host``/``--port`` arguments and, by ``FAKE_VLLM_MODE``, serves ``/v1/models``, crashes,
never answers, or ignores SIGTERM: what the real server does when a model is missing, a start hangs, or a worker
will not stop.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest

from pipeline import server as server_module
from pipeline.config import ServerConfig
from pipeline.server import ManagedServer, ServerError

STAND_IN = r'''
import argparse, json, os, signal, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--host")
parser.add_argument("--port", type=int)
args, _ = parser.parse_known_args()
mode = os.environ.get("FAKE_VLLM_MODE", "serve")
print(f"stand-in pid {os.getpid()} mode {mode} port {args.port}", flush=True)
if mode == "crash":
    print("ValueError: model not found", flush=True)
    sys.exit(3)
if mode == "ignore_term":
    signal.signal(signal.SIGTERM, lambda *a: print("got SIGTERM, ignoring it", flush=True))
if mode == "silent":
    while True:
        time.sleep(1)

class Models(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"data": [{"id": "stand-in"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

try:
    httpd = HTTPServer((args.host, args.port), Models)
except OSError as exc:
    print(f"ERROR: {exc}", flush=True)  # vLLM's own message names the errno the same way
    sys.exit(1)
httpd.serve_forever()
'''


@pytest.fixture
def stand_in(tmp_path) -> Path:
    path = tmp_path / "stand_in.py"
    path.write_text(STAND_IN)
    return path


def managed(tmp_path: Path, stand_in: Path, mode: str, **config) -> ManagedServer:
    server_config = ServerConfig(command=[sys.executable, str(stand_in)], env={"FAKE_VLLM_MODE": mode}, **config)
    return ManagedServer(server_config, "stand-in-model", tmp_path / "server.log")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_port_taken_before_the_bind_is_replaced_by_another(tmp_path, stand_in, monkeypatch):
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    try:
        server = managed(tmp_path, stand_in, "serve")
        server.port = taken  # as if another process took the picked port before the server bound it
        picks = []
        original = server_module.free_port
        monkeypatch.setattr(server_module, "free_port", lambda host="127.0.0.1": picks.append(1) or original(host))
        try:
            url = server.start()
            assert server.port != taken and url == f"http://127.0.0.1:{server.port}/v1"
            assert len(picks) == 1
            assert "Address already in use" in (tmp_path / "server.log").read_text()
        finally:
            server.stop()
    finally:
        squatter.close()


def test_a_configured_port_that_is_taken_fails_naming_the_cause(tmp_path, stand_in):
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    try:
        server = managed(tmp_path, stand_in, "serve", port=squatter.getsockname()[1])
        with pytest.raises(ServerError, match="Address already in use"):
            server.start()  # the user chose this port: no silent move to another one
        assert server.process is None
    finally:
        squatter.close()


def test_a_server_that_exits_during_start_up_fails_with_its_log(tmp_path, stand_in):
    server = managed(tmp_path, stand_in, "crash")
    with pytest.raises(ServerError, match=r"(?s)exited with code -?\d+ during start-up.*model not found.*vLLM exited with code 3"):
        server.start()
    assert server.process is None


def test_a_server_that_never_answers_times_out_and_is_stopped(tmp_path, stand_in):
    server = managed(tmp_path, stand_in, "silent", startup_timeout_s=2)
    with pytest.raises(ServerError, match="did not answer .*/v1/models within 2 s"):
        server.start()
    assert server.process is None
    pid = int((tmp_path / "server.log").read_text().split("stand-in pid ")[1].split()[0])
    deadline = time.monotonic() + 30
    while group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not group_alive(pid), "the silent server was left running after the timeout"


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path, stand_in):
    server = managed(tmp_path, stand_in, "ignore_term")
    server.start()
    pgid = os.getpgid(server.process.pid)
    server.stop(grace_s=1.0)
    assert "got SIGTERM, ignoring it" in (tmp_path / "server.log").read_text()  # it was asked first
    deadline = time.monotonic() + 30
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not group_alive(pgid), "the server ignoring SIGTERM was not killed"
