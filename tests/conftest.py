from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from frontends.stack import StackConfig
from tests.pipeline import Pipeline

# Model files: the tests never see files a developer pulled (their own model dir unless
# SINGTOME_TEST_MODEL_DIR names one), never a manifest or endpoint from the environment, and any
# model download that a test does not point elsewhere goes to a closed loopback port: no test
# reaches outside this machine.
CLOSED_LOOPBACK = "http://127.0.0.1:9"


_MADE_MODEL_DIR: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    given = os.environ.get("SINGTOME_TEST_MODEL_DIR")
    if not given:
        given = tempfile.mkdtemp(prefix="singtome-test-models-")
        _MADE_MODEL_DIR.append(given)
    os.environ["SINGTOME_MODEL_DIR"] = given
    for name in ("SINGTOME_MODEL_MANIFEST", "HF_ENDPOINT", "SINGTOME_HF_ENDPOINT"):
        os.environ.pop(name, None)
    os.environ["SINGTOME_MODEL_MIRROR"] = CLOSED_LOOPBACK


@contextlib.contextmanager
def logging_kept() -> Iterator[None]:
    """Undo what a command run in-process (typer's CliRunner) does to logging: it configures
    structlog and the root logger on the runner's stderr, which is closed once it returns."""
    import structlog

    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        structlog.configure(**config)
        root.handlers[:] = handlers
        root.setLevel(level)


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    for folder in _MADE_MODEL_DIR:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.fspath)
        if "/integration/" in path or "/faults/" in path:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack() -> Iterator[StackConfig]:
    """The real local broker and S3 server, started once for the whole test session."""
    from tests.pipeline import local_stack

    with local_stack() as cfg:
        yield cfg


@pytest.fixture
def pipeline(stack: StackConfig, tmp_path: Path) -> Iterator[Pipeline]:
    """An isolated pipeline (own topics and groups) whose workers are stopped afterwards."""
    line = Pipeline(stack, logs=tmp_path)
    try:
        yield line
    finally:
        line.stop()
