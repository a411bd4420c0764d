"""The vocabulary (schemas/vocabulary.py) is the one list of each kind of name: the registries of
the plugin families, the mixer's formats, the stems and the contract all hold exactly its names."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest

from agents.mixer.effects import EFFECTS, VOCAL_CHAIN
from agents.mixer.mix import STEM_NAMES
from agents.separator.backends import BACKEND_REGISTRY, backend_kind
from agents.voice.configs import SAMPLE_RATES as RVC_SAMPLE_RATES
from agents.voice.f0 import F0_REGISTRY, get_f0_extractor
from agents.voice.world import F0_METHODS as WORLD_METHODS
from foundation.encode import FORMATS
from schemas import vocabulary as vocab
from schemas.events import (
    ConversionOptions,
    ObjectKeys,
    OutputOptions,
    VocalsConverted,
    VoiceOptions,
    VoiceTrained,
)
from schemas.export import export

ROOT = Path(__file__).resolve().parents[2]


def test_the_f0_registry_holds_every_method_of_the_vocabulary_and_no_other() -> None:
    assert tuple(F0_REGISTRY) == vocab.F0_METHODS
    assert set(WORLD_METHODS) <= set(vocab.F0_METHODS)


@pytest.mark.parametrize("method", ["harvest", "dio", "pm", "crepe-tiny", "fcpe"])
def test_each_registered_f0_method_builds_an_extractor_of_its_name(method: str) -> None:
    assert get_f0_extractor(method).name == method


def test_the_separation_registry_holds_every_backend_kind_and_no_other() -> None:
    assert tuple(BACKEND_REGISTRY) == vocab.SEPARATION_BACKENDS
    assert {backend_kind("spleeter"), backend_kind("a_cappella"), backend_kind("x.onnx")} == set(
        vocab.SEPARATION_BACKENDS
    )
    for target in BACKEND_REGISTRY.values():  # each names a module's create()
        module, function = target.split(":")
        path = ROOT / (module.replace(".", "/") + ".py")
        names = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
        assert function in names, target


def test_the_effects_registry_holds_every_effect_of_the_vocabulary_and_no_other() -> None:
    assert set(EFFECTS) == set(vocab.EFFECT_NAMES)
    assert set(VOCAL_CHAIN) <= set(EFFECTS)


def test_formats_stems_rates_and_voice_kinds_are_the_vocabularys() -> None:
    assert tuple(FORMATS) == vocab.OUTPUT_FORMATS
    assert get_args(OutputOptions.model_fields["format"].annotation) == vocab.OUTPUT_FORMATS
    assert set(STEM_NAMES) == set(vocab.STEM_ROLES) <= set(ObjectKeys.model_fields)
    assert RVC_SAMPLE_RATES == vocab.SAMPLE_RATE_HZ
    assert tuple(vocab.SAMPLE_RATE_HZ) == vocab.SAMPLE_RATES
    assert get_args(VoiceOptions.model_fields["sample_rate"].annotation) == vocab.SAMPLE_RATES
    for field in (VoiceTrained.model_fields["voice_kind"], VocalsConverted.model_fields["backend"]):
        assert get_args(field.annotation) == vocab.VOICE_KINDS
    for options in (VoiceOptions, ConversionOptions):
        field = options.model_fields["f0_method"]
        assert get_args(field.annotation) == vocab.F0_METHODS
        assert field.default == vocab.DEFAULT_F0_METHOD


def test_the_exported_schema_lists_the_vocabulary_as_enums(tmp_path: Path) -> None:
    import json

    export(tmp_path)
    text = (tmp_path / "song.uploaded.schema.json").read_text()
    schema = json.loads(text)
    defs = schema.get("$defs", {})
    assert defs["ConversionOptions"]["properties"]["f0_method"]["enum"] == list(vocab.F0_METHODS)
    assert defs["OutputOptions"]["properties"]["format"]["enum"] == list(vocab.OUTPUT_FORMATS)


def test_no_module_outside_the_vocabulary_declares_one_of_its_lists() -> None:
    """A Literal or tuple spelling out two or more names of one vocabulary is a second
    declaration; only schemas/vocabulary.py may write one."""
    lists = [
        set(vocab.F0_METHODS),
        set(vocab.VOICE_KINDS),
        set(vocab.SAMPLE_RATES),
        set(vocab.OUTPUT_FORMATS),
        set(vocab.STEM_ROLES),
        set(vocab.SEPARATION_BACKENDS),
    ]
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in {"tests", "bench", ".venv", "build"} or rel == Path(
            "schemas/vocabulary.py"
        ):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Tuple | ast.List | ast.Set):
                elts = node.elts
            elif isinstance(node, ast.Subscript) and getattr(node.value, "id", "") == "Literal":
                inner = node.slice
                elts = inner.elts if isinstance(inner, ast.Tuple) else [inner]
            else:
                continue
            names = {e.value for e in elts if isinstance(e, ast.Constant)}
            if any(len(names & words) >= 2 and names <= words for words in lists):
                offenders.append(f"{rel}:{node.lineno} {sorted(names)}")
    assert not offenders, offenders
