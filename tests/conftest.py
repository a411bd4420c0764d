from __future__ import annotations

from collections.abc import Iterator

import pytest

from streams.stack import StackConfig


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackConfig]:
    """The real local broker and S3 server, started once for the whole test session."""
    from tests.pipeline import local_stack

    with local_stack(tmp_path_factory.mktemp("stack")) as cfg:
        yield cfg
