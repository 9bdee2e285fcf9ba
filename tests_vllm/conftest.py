"""Shared fixtures of the vLLM integration tests (run in the venv of tools/vllm_env.sh).

Everything is offline: the checkpoints are written by tiny_models.py into temporary directories, and
the Hugging Face hub is switched off before vLLM or transformers is imported. Engines are started
with small memory settings (the CPU build reserves ``gpu_memory_utilization`` of the machine's memory
for its KV cache) and shut down, with their processes, when the module that started them ends.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

import pytest  # noqa: E402

import tiny_models  # noqa: E402
from engines import MODEL_KINDS  # noqa: E402


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """{"llava": dir, "llava_next": dir}: the tiny checkpoints, written once per session."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {kind: tiny_models.write_checkpoint(root / kind, next_model=kind == "llava_next") for kind in MODEL_KINDS}


@pytest.fixture(scope="session")
def pictures():
    return tiny_models.images()
