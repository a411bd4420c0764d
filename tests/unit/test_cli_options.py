"""The CLI's stage flags: typed from the vocabulary, defaulting to the option models' defaults."""

from __future__ import annotations

from typing import Any, get_args

import typer
from typer.testing import CliRunner

from frontends.cli import app
from schemas import vocabulary as vocab
from schemas.events import ConversionOptions, VoiceOptions


def _params(command: str) -> dict[str, Any]:
    group = typer.main.get_command(app)
    return {p.name: p for p in group.commands[command].params}  # type: ignore[attr-defined]


def _choices(command: str, name: str) -> tuple[str, ...]:
    """The values a flag takes: the strings of its annotation's Literal (an unset flag's None
    left out)."""

    def strings(annotation: Any) -> list[str]:
        return [
            v for a in get_args(annotation) for v in ([a] if isinstance(a, str) else strings(a))
        ]

    return tuple(strings(_params(command)[name].type_descriptor.annotation))


def test_convert_and_train_flags_default_to_the_option_models() -> None:
    convert, train = _params("convert"), _params("train")
    for name in ("f0_up_key", "f0_method", "index_rate", "filter_radius", "rms_mix_rate"):
        assert convert[name].default == ConversionOptions.model_fields[name].default, name
    assert convert["protect"].default == ConversionOptions().protect
    for name in ("sample_rate", "f0_method", "epochs", "batch_size"):
        assert train[name].default == VoiceOptions.model_fields[name].default, name


def test_vocabulary_flags_offer_the_vocabularys_choices() -> None:
    for command in ("convert", "train", "cover", "submit"):
        assert _choices(command, "f0_method") == vocab.F0_METHODS, command
    for command in ("cover", "submit"):
        assert _choices(command, "fmt") == vocab.OUTPUT_FORMATS, command
    assert _choices("train", "sample_rate") == vocab.SAMPLE_RATES


def test_an_option_the_model_refuses_is_a_clean_error() -> None:
    result = CliRunner().invoke(
        app, ["convert", "--sid0", "v.pth", "--input-audio0", "x.wav", "--protect", "0.9"]
    )
    assert result.exit_code == 1 and "protect" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(
        app, ["convert", "--sid0", "v.pth", "--input-audio0", "x.wav", "--f0-method", "yin"]
    )
    assert result.exit_code == 2 and "yin" in result.output
