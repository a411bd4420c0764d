"""structlog set-up: one JSON object per line, with ``job_id``, ``stage`` and ``event_id``.

``stage`` is bound once per process (the worker's stage), ``job_id``/``event_id`` per event through
context variables (:func:`job_context`), so every line logged while an event is handled carries
them, including lines from plain stage functions that know nothing of Kafka.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

_DEFAULTS = {"job_id": None, "stage": None}


def _defaults(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key, value in _DEFAULTS.items():
        event_dict.setdefault(key, value)
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "json", stage: str | None = None) -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _defaults,
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries (faust, aiokafka, botocore) log through the standard library: render them the
    # same way so the stream stays one JSON object per line.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    structlog.contextvars.clear_contextvars()
    if stage:
        _DEFAULTS["stage"] = stage
        structlog.contextvars.bind_contextvars(stage=stage)


@contextmanager
def job_context(**values: Any) -> Iterator[None]:
    """Bind ``job_id``/``event_id`` (and anything else) to every log line inside the block."""
    tokens = structlog.contextvars.bind_contextvars(**values)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
