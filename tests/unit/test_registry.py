"""The stage registry against the flow table: the same stages in the same order, each consuming and
producing what the flow says, each handler importable."""

from __future__ import annotations

import pytest

from agents import registry
from schemas.events import BY_TOPIC
from schemas.flow import STAGES as FLOW
from streams.stage import load_handler, resolve_handler


def test_the_registry_declares_the_flows_stages_in_order() -> None:
    assert tuple(FLOW) == registry.STAGE_NAMES
    assert [s.name for s in registry.STAGES] == list(FLOW)
    assert len(set(registry.STAGE_NAMES)) == len(registry.STAGES)


@pytest.mark.parametrize("declaration", registry.STAGES, ids=lambda s: s.name)
def test_each_stage_consumes_and_produces_what_the_flow_says(
    declaration: registry.StageDeclaration,
) -> None:
    flow = FLOW[declaration.name]
    assert declaration.consumes == flow.consumes and declaration.consumes in BY_TOPIC
    assert declaration.produces.topic == flow.produces
    assert declaration.produces is BY_TOPIC[flow.produces]
    assert registry.stage(declaration.name) is declaration


@pytest.mark.parametrize("declaration", registry.STAGES, ids=lambda s: s.name)
def test_each_handler_is_the_stages_own_and_importable(
    declaration: registry.StageDeclaration,
) -> None:
    handler = declaration.load()
    assert callable(handler)
    assert handler.__module__.startswith(f"agents.{declaration.name}.")
    assert resolve_handler(declaration.handler) is handler
    assert resolve_handler(handler) is handler


def test_an_unknown_stage_names_the_choices() -> None:
    with pytest.raises(ValueError, match="choose one of separator, trainer, converter, mixer"):
        registry.stage("karaoke")


@pytest.mark.parametrize("spec", ["agents.mixer.agent", ":handle", "agents.mixer.agent:"])
def test_a_handler_spec_needs_a_module_and_a_function(spec: str) -> None:
    with pytest.raises(ValueError, match=r"package\.module:function"):
        load_handler(spec)


def test_the_model_kinds_a_stage_reads_are_the_manifests_kinds() -> None:
    from typing import get_args

    from streams.models.manifest import Kind, builtin_entries

    kinds = set(get_args(Kind))
    for declaration in registry.STAGES:
        assert set(declaration.models) <= kinds, declaration.name
    # every built-in model file is read by some stage
    assert {e.kind for e in builtin_entries()} <= {k for s in registry.STAGES for k in s.models}
    assert registry.stages_using("content-encoder") == ("trainer", "converter")
    assert registry.stages_using("pretrained") == ("trainer",)
    assert registry.stages_using("separation") == ("separator",)
