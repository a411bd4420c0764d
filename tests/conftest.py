from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.stack import StackConfig
from tests.pipeline import Pipeline


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
