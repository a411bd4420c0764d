"""The arrows that must never exist between the packages (docs/architecture.md), checked on every
.py file of the project: every import at any depth (inside functions, under TYPE_CHECKING,
relative ones, ``importlib.import_module("...")`` with a literal name) is read with ``ast``."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agents.registry import STAGE_NAMES

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".git", ".venv", "venv", "build", "__pycache__", "node_modules"}

STAGE_PACKAGES = tuple(f"agents.{name}" for name in STAGE_NAMES)


@dataclass(frozen=True)
class Rule:
    """Modules under ``source`` must not import anything under ``forbidden``."""

    source: str
    forbidden: tuple[str, ...]
    why: str


def _rules() -> tuple[Rule, ...]:
    rules = [
        Rule("streams", ("agents", "frontends"), "the runtime knows no stage and no front end"),
        Rule(
            "schemas",
            ("foundation", "streams", "agents", "frontends"),
            "the contract stands alone: it imports nothing of the project",
        ),
        Rule(
            "foundation",
            ("agents", "streams", "frontends"),
            "the foundation imports no stage, no shared model code, no runtime, no front end",
        ),
        Rule(
            "agents.voice",
            (*STAGE_PACKAGES, "streams", "frontends"),
            "shared model code imports the foundation and the schemas only: no stage, no runtime",
        ),
        Rule(
            "agents.registry",
            (*STAGE_PACKAGES, "frontends"),
            "the registry names handlers; reading it imports no stage",
        ),
    ]
    for stage in STAGE_PACKAGES:
        others = tuple(other for other in STAGE_PACKAGES if other != stage)
        rules.append(
            Rule(stage, (*others, "frontends"), "a stage imports no other stage and no front end")
        )
    return tuple(rules)


RULES = _rules()


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def module_name(path: Path, root: Path = ROOT) -> tuple[str, bool]:
    """The dotted name of the module at ``path``, and whether it is a package's ``__init__``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def imports(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, list[str]]]:
    """Every import in ``source`` (the text of ``module``), wherever it stands: its line and the
    names it may bring in, most general first (``from agents import mixer`` may be the package
    ``agents`` or the module ``agents.mixer``)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, [alias.name]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".") if package else []
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                names = [base] if base else []
                if alias.name != "*":
                    names.append(f"{base}.{alias.name}" if base else alias.name)
                yield node.lineno, names
        elif isinstance(node, ast.Call) and (name := _literal_import(node)) is not None:
            yield node.lineno, [name]


def _literal_import(call: ast.Call) -> str | None:
    """The module an ``importlib.import_module("...")`` or ``__import__("...")`` call names."""
    func = call.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    if called not in {"import_module", "__import__"} or not call.args:
        return None
    first = call.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def violations(modules: Iterable[tuple[str, bool, str]]) -> list[str]:
    """``module:line imports target: why`` for every forbidden arrow among ``(name, is_package,
    source)`` triples."""
    found = []
    for module, is_package, source in modules:
        rules = [rule for rule in RULES if _under(module, rule.source)]
        for lineno, names in imports(source, module, is_package):
            for rule in rules:
                target = next((n for n in names if any(_under(n, f) for f in rule.forbidden)), None)
                if target is not None:
                    found.append(f"{module}:{lineno} imports {target}: {rule.why}")
    return sorted(set(found))


def project_files(root: Path = ROOT) -> list[Path]:
    return sorted(
        path
        for path in root.rglob("*.py")
        if not SKIP_DIRS.intersection(path.relative_to(root).parts)
    )


def _modules(paths: Iterable[Path]) -> Iterator[tuple[str, bool, str]]:
    for path in paths:
        name, is_package = module_name(path)
        yield name, is_package, path.read_text(encoding="utf-8")


def test_no_forbidden_import_in_the_project() -> None:
    paths = project_files()
    names = {module_name(path)[0] for path in paths}
    # The scan sees the whole project, so an empty answer means something.
    for expected in (
        "streams.worker",
        "schemas.export",
        "foundation.errors",
        "agents.voice.world",
        "frontends.cli",
    ):
        assert expected in names
    assert violations(_modules(paths)) == []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("agents.trainer.stage", "from agents.converter.stage import convert_vocals"),
        ("agents.mixer.agent", "def f():\n    import agents.separator.decode\n"),
        ("agents.separator.stage", "from agents import mixer"),
        ("agents.converter.agent", "from frontends.demo_audio import write"),
        ("streams.worker", "def load():\n    from agents.registry import STAGES\n"),
        ("streams.runner", "import importlib\nimportlib.import_module('agents.mixer.agent')"),
        ("streams.store", "from frontends.stack import StackConfig"),
        ("schemas.export", "def doc():\n    from streams.topics import STAGES\n"),
        ("schemas.events", "from agents.registry import STAGES"),
        ("schemas.flow", "from frontends import cli"),
        ("schemas.events", "from foundation.errors import ERROR_CODES"),
        ("agents.voice.world", "from agents.converter.segments import spans"),
        ("agents.voice.world", "from ..converter import segments"),
        ("agents.voice.f0.rmvpe", "from ...trainer.features import extract"),
        ("agents.voice", "from frontends.local import run_cover"),
        ("agents.registry", "from agents.mixer import agent"),
        ("schemas.vocabulary", "from agents.voice.f0 import F0_REGISTRY"),
    ],
)
def test_a_forbidden_import_is_found(module: str, source: str) -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    pass\n" + source
    found = violations([(module, module in {"agents.voice", "foundation"}, source)])
    assert len(found) == 1 and found[0].startswith(f"{module}:"), found


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("agents.trainer.stage", "from agents.voice.f0 import get_f0_extractor"),
        ("agents.converter.pipeline", "from .segments import spans"),
        ("agents.mixer.agent", "from streams.stage import StageContext"),
        ("frontends.cli", "from agents.registry import STAGES\nfrom agents.mixer import report"),
        ("frontends.local", "from streams.store import LocalStore"),
        ("streams.runner", "from schemas.events import Event\nimport faust"),
        ("schemas.export", "from schemas.flow import STAGES"),
        ("agents.registry", "from streams.stage import load_handler"),
        ("agents.registry", "from streams.models.manifest import Kind"),
        ("agents.voice.f0", "from schemas.vocabulary import F0_METHODS"),
        ("tests.stages", "from agents.mixer.agent import handle\nfrom frontends import cli"),
        ("bench.convert", "from agents.converter.pipeline import convert_audio16k"),
        ("agents.voice.world", "from foundation.errors import StageError\nimport schemas.events"),
        ("streams.runner", "from foundation.logging import get_logger"),
        ("agents.mixer.stage", "from foundation.audio import resample"),
        ("foundation.audio", "from foundation.errors import StageError\nimport numpy"),
    ],
)
def test_an_allowed_import_is_not_flagged(module: str, source: str) -> None:
    assert violations([(module, False, source)]) == []
