"""The vocabulary, declared once: the names a job option or an event may hold.

They are part of the contract (the exported JSON Schema lists them as enums), so they live with the
event models. Each is a ``Literal`` type for pydantic, typer and mypy, and a tuple of its values
for code that iterates over them. The plugin registries (``agents/voice/f0``,
``agents/separator/backends``, ``agents/mixer/effects``) and the output formats of the mixer are
held to these tuples by ``tests/unit/test_vocabulary.py``: a new method is one module, one line in
its registry and its name here.
"""

from __future__ import annotations

from typing import Literal, get_args

# Pitch (f0) methods (agents/voice/f0). 'rmvpe' needs SINGTOME_RMVPE_PATH; without it the workers
# use 'fcpe', whose weights ship with its package.
F0Method = Literal["rmvpe", "harvest", "dio", "pm", "crepe", "crepe-tiny", "fcpe"]
F0_METHODS: tuple[F0Method, ...] = get_args(F0Method)
DEFAULT_F0_METHOD: F0Method = "rmvpe"
# The methods the WORLD fallback voice analyses with (agents/voice/world.py); any other method
# asked of it runs as 'fcpe'.
WorldF0Method = Literal["fcpe", "dio", "harvest"]
WORLD_F0_METHODS: tuple[WorldF0Method, ...] = get_args(WorldF0Method)
WorldTracker = Literal["dio", "harvest"]
"""WORLD's own first-estimate trackers (agents/voice/f0/world_f0.py), refined by StoneMask."""
WORLD_TRACKERS: tuple[WorldTracker, ...] = get_args(WorldTracker)

# What the trainer produced and the converter runs: an RVC model, or the no-weights WORLD
# fallback voice profile.
VoiceKind = Literal["rvc", "world"]
VOICE_KINDS: tuple[VoiceKind, ...] = get_args(VoiceKind)

# RVC's sample-rate recipes (agents/voice/configs.py maps each to Hz).
SampleRate = Literal["32k", "40k", "48k"]
SAMPLE_RATES: tuple[SampleRate, ...] = get_args(SampleRate)
SAMPLE_RATE_HZ: dict[SampleRate, int] = {"32k": 32_000, "40k": 40_000, "48k": 48_000}

# Output formats of the finished track (agents/mixer/encode.py holds one codec per format).
OutputFormat = Literal["wav", "flac", "mp3", "m4a"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = get_args(OutputFormat)

# The stems the separator writes and the mixer mixes.
StemRole = Literal["vocals", "accompaniment", "backing_vocals"]
STEM_ROLES: tuple[StemRole, ...] = get_args(StemRole)
VOCALS: StemRole = "vocals"
ACCOMPANIMENT: StemRole = "accompaniment"
BACKING_VOCALS: StemRole = "backing_vocals"

# Separation backends (agents/separator/backends): the bundled Spleeter weights, the a cappella
# pass-through (options.separator.skip) and any UVR model file run by audio-separator.
SeparationBackendKind = Literal["spleeter", "a_cappella", "uvr"]
SEPARATION_BACKENDS: tuple[SeparationBackendKind, ...] = get_args(SeparationBackendKind)

# Mix effects (agents/mixer/effects).
EffectName = Literal["highpass", "compressor", "reverb", "key_shift"]
EFFECT_NAMES: tuple[EffectName, ...] = get_args(EffectName)
