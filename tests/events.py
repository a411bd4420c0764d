"""Small builders of valid events for the tests."""

from __future__ import annotations

from schemas.events import JobOptions, VoiceOptions


def voice_options(job_id: str) -> JobOptions:
    """Options naming the job's own voice dataset: every consumed event must name a voice (the
    test stages never read it)."""
    return JobOptions(voice=VoiceOptions(dataset_key=f"uploads/{job_id}/voice/"))
