"""The stages, declared once: one line per stage names its handler; the rest comes from the flow.

Front ends read this list: ``singtome worker <stage>`` hands the stage's handler to the runtime
(``streams.worker``, which imports no stage), the one-process cover calls the handlers in order,
the demo starts one worker per stage. Which topic a stage consumes and which event it produces is
the flow table's fact (``schemas/flow.py``); a declaration takes both from there instead of
repeating them. A handler is named ``package.module:function`` and imported only when the stage
runs, so reading this list costs no model code (and importing it imports no stage).
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.events import BY_TOPIC, Event
from schemas.flow import STAGES as FLOW
from streams.models.manifest import Kind as ModelKind
from streams.stage import Handler, load_handler


@dataclass(frozen=True)
class StageDeclaration:
    name: str
    #: the topic the stage consumes
    consumes: str
    #: the event class the stage produces
    produces: type[Event]
    #: where the handler lives, ``package.module:function``
    handler: str
    #: whether its work runs on the configured device (SINGTOME_DEVICE) or always on the CPU
    uses_device: bool
    #: the kinds of model file it reads (the model manifest's ``kind``), for `singtome doctor`
    models: tuple[ModelKind, ...] = ()

    def load(self) -> Handler:
        """Import the stage's handler."""
        return load_handler(self.handler)


def _declare(
    name: str, handler: str, *, uses_device: bool, models: tuple[ModelKind, ...] = ()
) -> StageDeclaration:
    topics = FLOW[name]
    return StageDeclaration(
        name,
        topics.consumes,
        BY_TOPIC[topics.produces],
        handler,
        uses_device=uses_device,
        models=models,
    )


# The RVC files: a content encoder and a pitch model for both voice stages, the pretrained
# generator/discriminator pair for training only.
_VOICE_MODELS: tuple[ModelKind, ...] = ("content-encoder", "pitch")

STAGES: tuple[StageDeclaration, ...] = (
    _declare(
        "separator",
        "agents.separator.agent:handle",
        uses_device=True,
        models=("separation", "separation-config"),
    ),
    _declare(
        "trainer",
        "agents.trainer.agent:handle",
        uses_device=True,
        models=(*_VOICE_MODELS, "pretrained"),
    ),
    _declare("converter", "agents.converter.agent:handle", uses_device=True, models=_VOICE_MODELS),
    # the mixer never touches torch
    _declare("mixer", "agents.mixer.agent:handle", uses_device=False),
)

BY_NAME: dict[str, StageDeclaration] = {stage.name: stage for stage in STAGES}

#: the stage names, in pipeline order
STAGE_NAMES: tuple[str, ...] = tuple(BY_NAME)


def stages_using(kind: str) -> tuple[str, ...]:
    """The stages that read model files of ``kind``, in pipeline order."""
    return tuple(stage.name for stage in STAGES if kind in stage.models)


def stage(name: str) -> StageDeclaration:
    """The declaration of stage ``name``; an unknown name is a ``ValueError`` naming the choices."""
    try:
        return BY_NAME[name]
    except KeyError:
        choices = ", ".join(STAGE_NAMES)
        raise ValueError(f"unknown stage {name!r}; choose one of {choices}") from None
