"""The foundation under the stages: what every stage, the shared model code and the runtime use.

Audio I/O (probe, decode, encode), the one resampler, levels, segments, the safe checkpoint
loader, the device choice, the error codes and the logger. It imports no stage, no
``agents/voice``, no runtime (``streams``) and no front end (docs/architecture.md).
"""
