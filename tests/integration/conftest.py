from __future__ import annotations

from collections.abc import Iterator

import pytest

from streams.stack import StackConfig
from tests.pipeline import Pipeline


@pytest.fixture
def pipeline(stack: StackConfig, tmp_path) -> Iterator[Pipeline]:  # type: ignore[no-untyped-def]
    """An isolated pipeline (own topics and groups) whose workers are stopped afterwards."""
    line = Pipeline(stack, logs=tmp_path)
    try:
        yield line
    finally:
        line.stop()
