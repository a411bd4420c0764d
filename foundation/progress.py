"""The progress callback every stage function takes: ``progress(fraction, message)``."""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[float, str], None]
"""Called with the fraction done (0..1) and a short message; the runner turns it into events."""
