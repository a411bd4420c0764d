"""The quality report of a job and the conversion of backing vocals, through the real handlers.

A generated parallel pair (frontends.demo_audio.parallel_pair): a soprano line in one espeak voice,
and recordings of another voice an octave lower as the dataset the job names. The converter
learns nothing here (the profile is learned as the trainer would), converts lead and backing
vocals, measures the conversion and hands ``quality`` on; the mixer copies it into
``track.ready`` and mixes the converted backing vocals, not the separated ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents.converter.agent import handle as convert_handle
from agents.mixer.agent import handle as mix_handle
from agents.trainer.profile import learn_profile
from agents.voice import quality
from foundation.audio import load_audio
from frontends.demo_audio import accompaniment, parallel_pair, speech_voice, sung_vocal, write
from schemas.events import (
    ConversionOptions,
    ConversionQuality,
    JobOptions,
    ObjectKeys,
    TrackReady,
    VoiceOptions,
    VoiceTrained,
)
from streams.settings import Settings
from streams.stage import StageContext
from streams.store import LocalStore

SR = 44100
SECONDS = 4.0


class RecordingStore(LocalStore):
    """A local store that remembers which keys were downloaded."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.fetched: list[str] = []

    def get_file(self, key: str, path: Path) -> Path:  # type: ignore[override]
        self.fetched.append(key)
        return super().get_file(key, path)


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("job")
    pair = parallel_pair(SECONDS, SR, seed=3, dataset_takes=2, take_s=6.0)
    store = RecordingStore(root / "store")
    takes = [write(root / f"take{n}.wav", take, SR) for n, take in enumerate(pair.dataset)]
    for take in takes:
        store.put_file(f"uploads/job-q/voice/{take.name}", take)
    profile = learn_profile(takes).save(root / "profile.npz")
    # Backing vocals: the source's voice a major third above the lead.
    backing, _ = sung_vocal(SECONDS, SR, [n * 1.26 for n in (440.0, 523.25, 587.33)], 9, "en+f2")
    files = {
        "stems/s/vocals.flac": write(root / "vocals.flac", pair.source, SR),
        "stems/s/backing_vocals.flac": write(root / "backing.flac", 0.5 * backing, SR),
        "stems/s/accompaniment.flac": write(
            root / "accompaniment.flac", accompaniment(SECONDS, SR, seed=1), SR
        ),
        "voices/v/profile.npz": profile,
    }
    for key, path in files.items():
        store.put_file(key, path)
    options = JobOptions(
        voice=VoiceOptions(dataset_key="uploads/job-q/voice/"),
        conversion=ConversionOptions(backing=True),
    )
    options.output.format = "wav"
    event = VoiceTrained(
        job_id="job-q",
        voice_kind="world",
        options=options,
        keys=ObjectKeys(
            vocals="stems/s/vocals.flac",
            backing_vocals="stems/s/backing_vocals.flac",
            accompaniment="stems/s/accompaniment.flac",
            voice_model="voices/v/profile.npz",
        ),
    )
    settings = Settings(models={"dir": root / "models"}, converter={"model_cache_mb": 64})

    def context(name: str) -> StageContext:
        return StageContext(stage=name, settings=settings, store=store, workdir=root / name)

    converted = convert_handle(event, context("converter"))
    again = convert_handle(event, context("converter-again"))
    ready = mix_handle(converted, context("mixer"))
    return {
        "pair": pair,
        "store": store,
        "root": root,
        "converted": converted,
        "again": again,
        "ready": ready,
        "backing": backing,
    }


def test_the_job_reports_its_quality(job: dict[str, Any]) -> None:
    report = job["converted"].quality
    assert isinstance(report, ConversionQuality)
    # The soprano line went down the octave that puts it on the voice's median pitch.
    assert (report.key_semitones, report.key_method) == (-12, "auto_octave")
    assert report.speaker_similarity is not None and report.source_similarity is not None
    # The conversion moved the vocals toward the voice, and the figure says so.
    assert report.speaker_similarity > report.source_similarity + 0.05
    assert report.f0_error_cents is not None and report.f0_error_cents < 30.0
    assert report.voiced_kept is not None and report.voiced_kept > 0.8
    assert report.backing_converted
    # The same figures come back from the cache, and reach track.ready.
    assert job["again"].cache_hit and job["again"].quality == report
    ready: TrackReady = job["ready"]
    assert ready.quality == report


def test_the_figures_are_measured_not_made_up(job: dict[str, Any]) -> None:
    """Recomputed here from the stored audio: the converted vocals' pitch follows the source
    an octave down, and at the wrong key the same figure would be an octave off."""
    store, root = job["store"], job["root"]
    stored = store.get_file(job["converted"].keys.converted_vocals, root / "c.flac")
    converted = load_audio(stored, SR)
    source = job["pair"].source
    error = quality.f0_error_cents(quality.pitch(converted, SR), quality.pitch(source, SR), -12)
    assert error == pytest.approx(job["converted"].quality.f0_error_cents, abs=1.0)
    wrong_key = quality.f0_error_cents(quality.pitch(converted, SR), quality.pitch(source, SR), 0)
    assert wrong_key is not None and wrong_key > 1000  # an octave is 1200 cents


def test_backing_vocals_are_converted_with_the_same_voice_and_key(job: dict[str, Any]) -> None:
    store, root, converted = job["store"], job["root"], job["converted"]
    assert converted.converted_backing and converted.converted_backing.startswith("converted/")
    backing = load_audio(store.get_file(converted.converted_backing, root / "b.flac"), SR)
    original = job["backing"]
    assert len(backing) == len(original)
    # Same key as the lead (-12): the harmony keeps its interval to the lead.
    error = quality.f0_error_cents(quality.pitch(backing, SR), quality.pitch(original, SR), -12)
    assert error is not None and error < 30.0
    # Same voice: the converted backing is nearer the voice dataset than the separated one.
    voice = quality.speaker_embedding([(take, SR) for take in job["pair"].dataset])
    before = quality.similarity(quality.speaker_embedding([(original, SR)]), voice)
    after = quality.similarity(quality.speaker_embedding([(backing, SR)]), voice)
    assert before is not None and after is not None and after > before + 0.05
    # Both stems were converted, and the mixer mixed the converted backing, not the separated.
    assert converted.keys.converted_vocals != converted.converted_backing
    assert converted.converted_backing in store.fetched
    last = len(store.fetched) - 1 - store.fetched[::-1].index(converted.keys.converted_vocals)
    mixer_fetches = store.fetched[last:]  # the mixer's downloads come last
    assert converted.converted_backing in mixer_fetches
    assert "stems/s/backing_vocals.flac" not in mixer_fetches


def test_without_the_option_the_backing_vocals_stay_as_separated(
    job: dict[str, Any], tmp_path: Path
) -> None:
    event = job["converted"].model_copy(update={"converted_backing": None})
    store = job["store"]
    store.fetched.clear()
    settings = Settings(models={"dir": tmp_path / "m"}, converter={"model_cache_mb": 64})
    context = StageContext(
        stage="mixer", settings=settings, store=store, workdir=tmp_path / "w", force=True
    )
    mix_handle(event, context)
    assert "stems/s/backing_vocals.flac" in store.fetched
    assert job["converted"].converted_backing not in store.fetched


def test_the_fallback_meets_its_figures_on_the_pair(job: dict[str, Any]) -> None:
    """The issue's figures for the WORLD fallback on a generated pair (bench/quality.py gives
    them on longer ones): the true octave, < 25 cents from the target's melody, >= 90 % of the
    sung frames voiced, the 8-12 kHz band within 10 dB of the target voice's, and near the
    voice: speaker similarity measured 0.898 on this short pair (the source: 0.691), held to
    0.87 here; bench/quality.py --pairs 3 gives 0.915-0.924 on longer ones (see README)."""
    from bench.quality import HIGH_BAND_HZ, _truth_on_10ms

    store, root, pair = job["store"], job["root"], job["pair"]
    stored = store.get_file(job["converted"].keys.converted_vocals, root / "fig.flac")
    converted = load_audio(stored, SR)
    heard = quality.pitch(converted, SR)
    truth = _truth_on_10ms(pair.target_f0, len(heard))
    error = quality.f0_error_cents(heard, truth, 0.0)
    assert error is not None and error < 25.0
    voiced = quality.voiced_kept(heard, quality.pitch(pair.source, SR))
    assert voiced is not None and voiced >= 0.9
    band = quality.band_level_db(converted, SR, HIGH_BAND_HZ) - quality.band_level_db(
        pair.target, SR, HIGH_BAND_HZ
    )
    assert abs(band) <= 10.0
    report = job["converted"].quality
    assert report.speaker_similarity >= 0.87 and report.source_similarity < 0.75


def test_the_utterance_embedding_in_batches_is_resemblyzers_own() -> None:
    """A minute of voice is more than one batch of partial utterances: the batched embedding
    is the one ``embed_utterance`` gives running every partial at once."""
    from resemblyzer import preprocess_wav

    voice = np.tile(speech_voice(6.0, quality.ANALYSIS_SR, voice="en+f2", seed=5), 10)
    wav = preprocess_wav(voice, source_sr=quality.ANALYSIS_SR)
    encoder = quality._voice_encoder()
    batched = quality._embed_utterance(encoder, wav)
    _, _, slices = encoder.embed_utterance(wav, return_partials=True)
    assert len(slices) > quality.PARTIALS_PER_BATCH
    np.testing.assert_allclose(batched, encoder.embed_utterance(wav), atol=1e-6)
