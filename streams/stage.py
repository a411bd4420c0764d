"""What the runner hands a stage: the contract between the Kafka adapter and the stage logic.

A stage's handler is ``handle(event, ctx) -> next_event``: it fetches the objects the event names
from ``ctx.store``, calls the stage's plain function, stores the outputs under content-addressed
keys and returns the next event. It never touches Kafka. The runtime knows no stage: a front end
looks the stage up in the stage registry (``agents/registry.py``) and hands its handler over.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from foundation.progress import ProgressFn
from schemas.events import Event
from streams.settings import Settings
from streams.store import ObjectStore


def _no_progress(fraction: float, message: str) -> None:
    return None


@dataclass
class StageContext:
    stage: str
    settings: Settings
    store: ObjectStore
    workdir: Path
    progress: ProgressFn = field(default=_no_progress)
    force: bool = False


Handler = Callable[[Event, StageContext], Event]

#: a handler, or where to import it from (``package.module:function``)
HandlerRef = Handler | str


def load_handler(spec: str) -> Handler:
    """Import the handler ``package.module:function`` names."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"handler must look like 'package.module:function', got {spec!r}")
    handler: Handler = getattr(importlib.import_module(module_name), attr)
    return handler


def resolve_handler(handler: HandlerRef) -> Handler:
    """The handler itself: imported when given as ``package.module:function``."""
    return load_handler(handler) if isinstance(handler, str) else handler


def fetch(ctx: StageContext, key: str | None, name: str) -> Path:
    """Download ``key`` into the job's work dir as ``name``; a missing key is the input's fault."""
    from foundation.errors import StageError
    from streams.store import ObjectNotFound

    if not key:
        raise StageError("missing_object", f"the event names no object for {name!r}")
    try:
        return ctx.store.get_file(key, ctx.workdir / name)
    except ObjectNotFound:
        raise StageError("missing_object", f"object not found: {key}") from None


def all_exist(ctx: StageContext, keys: list[str]) -> bool:
    """True when every output is already stored (and the job does not ask to recompute)."""
    return not ctx.force and all(ctx.store.exists(key) for key in keys)
