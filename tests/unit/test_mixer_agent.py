"""Mixer handler (vocals.converted -> track.ready) with a LocalStore, and the job report."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from agents.mixer import agent, report
from agents.mixer.report import render_report, report_for_job
from foundation.errors import StageError
from frontends import demo_audio as audio_synth
from schemas.events import (
    JobOptions,
    MixOptions,
    ObjectKeys,
    OutputOptions,
    StageRecord,
    TrackReady,
    VocalsConverted,
)
from streams.keys import job_event_key, track_key
from streams.settings import Settings
from streams.stage import StageContext
from streams.store import LocalStore, put_json
from tests.unit.test_mixer import RATE, stereo, tone, write_stem

JOB = "job-42"


MELODY_HZ = [220.0, 246.94, 261.63, 293.66, 329.63, 293.66, 261.63, 246.94]
CONVERTED_SHIFT = 3  # semitones: the "converted" vocal sings the same words 3 semitones higher


def sung(seconds: float, rate: int, semitones: float = 0.0) -> np.ndarray:
    """espeak-ng words sung on a known melody (pyworld), as the separator/converter would give."""
    notes = [hz * 2 ** (semitones / 12) for hz in MELODY_HZ]
    audio, _ = audio_synth.sung_vocal(seconds, rate, notes_hz=notes, seed=5)
    return audio


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "store")
    stems = tmp_path / "stems"
    stems.mkdir()
    store.put_file(
        "stems/abc/vocals.flac", write_stem(stems / "vocals.flac", sung(3.0, RATE), RATE)
    )
    store.put_file(
        "stems/abc/accompaniment.flac",
        write_stem(stems / "accompaniment.flac", audio_synth.accompaniment(3.0, RATE, seed=2)),
    )
    store.put_file(
        "stems/abc/backing_vocals.flac",
        write_stem(stems / "backing.flac", stereo(tone(330, 3.0, amplitude=0.05))),
    )
    store.put_file(
        "converted/def/vocals.flac",
        write_stem(stems / "converted.flac", sung(3.02, 40000, CONVERTED_SHIFT), 40000),
    )
    return store


def vocals_converted(fmt: str = "mp3", backing: bool = True) -> VocalsConverted:
    start = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    return VocalsConverted(
        job_id=JOB,
        occurred_at=start + timedelta(seconds=100),
        options=JobOptions(
            mix=MixOptions(key_shift=0),
            output=OutputOptions(format=fmt, title="My Cover", artist="Me"),
        ),
        keys=ObjectKeys(
            song="uploads/job-42/song.mp3",
            vocals="stems/abc/vocals.flac",
            accompaniment="stems/abc/accompaniment.flac",
            backing_vocals="stems/abc/backing_vocals.flac" if backing else None,
            voice_model="voices/xyz/model.pth",
            converted_vocals="converted/def/vocals.flac",
        ),
        history=[
            StageRecord(
                stage="separator", started_at=start, finished_at=start + timedelta(seconds=30)
            ),
            StageRecord(
                stage="trainer",
                started_at=start + timedelta(seconds=31),
                finished_at=start + timedelta(seconds=31.5),
                cache_hit=True,
            ),
            StageRecord(
                stage="converter",
                started_at=start + timedelta(seconds=32),
                finished_at=start + timedelta(seconds=99),
            ),
        ],
        backend="world",
        sample_rate=40000,
        duration_s=3.02,
    )


def context(store: LocalStore, tmp_path: Path, name: str, force: bool = False) -> StageContext:
    return StageContext(
        stage="mixer",
        settings=Settings(storage={"presign_expiry_s": 3600}),
        store=store,
        workdir=tmp_path / name,
        force=force,
    )


def test_handler_mixes_stores_and_answers_track_ready(store: LocalStore, tmp_path: Path) -> None:
    event = vocals_converted("mp3")
    before = datetime.now(UTC)

    ready = agent.handle(event, context(store, tmp_path, "work1"))

    assert isinstance(ready, TrackReady)
    key = ready.track_key
    assert key == ready.keys.track and key == track_key(key.split("/")[1], "mp3")
    assert store.exists(key)
    assert ready.format == "mp3"
    assert ready.duration_s == pytest.approx(3.0, abs=0.06)
    assert ready.loudness_lufs == pytest.approx(-14.0, abs=0.6)  # measured on the decoded mp3
    assert ready.download_url == store.presign(key, 3600)
    assert ready.url_expires_at is not None
    assert (
        before + timedelta(seconds=3590)
        < ready.url_expires_at
        < datetime.now(UTC) + timedelta(seconds=3601)
    )
    # The envelope carries over with every intermediate key and the history for the runner.
    assert ready.job_id == JOB and ready.event_id != event.event_id
    assert ready.keys.vocals == "stems/abc/vocals.flac"
    assert ready.keys.converted_vocals == "converted/def/vocals.flac"
    assert ready.keys.backing_vocals == "stems/abc/backing_vocals.flac"
    assert ready.keys.voice_model == "voices/xyz/model.pth"
    assert [r.stage for r in ready.history] == ["separator", "trainer", "converter"]
    assert ready.timings_s["separator"] == 30.0
    assert ready.timings_s["trainer"] == 0.5
    assert ready.timings_s["converter"] == 67.0
    assert 0 < ready.timings_s["mixer"] < 60
    # From the converter's event (2026) to the mixer starting now: the queue wait.
    assert ready.timings_s["mixer_queue"] > 0
    assert ready.timings_s["total"] >= ready.timings_s["mixer_queue"] + 100


def test_second_delivery_reuses_the_track_and_gives_an_equivalent_answer(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = vocals_converted("flac")
    first = agent.handle(event, context(store, tmp_path, "work1"))
    stored = store.get_bytes(first.track_key)

    def no_remix(*args: object, **kwargs: object) -> None:
        raise AssertionError("the track exists: the mixer must not mix again")

    monkeypatch.setattr(agent, "mix_track", no_remix)
    second = agent.handle(event, context(store, tmp_path, "work2"))

    assert store.get_bytes(second.track_key) == stored
    same = {"track_key", "format", "duration_s", "loudness_lufs", "download_url", "keys", "job_id"}
    assert second.model_dump(include=same) == first.model_dump(include=same)
    assert [key for key in store.list("tracks/") if key.endswith(".flac")] == [first.track_key]

    # force recomputes: the mix function is called again.
    with pytest.raises(AssertionError, match="must not mix again"):
        agent.handle(event, context(store, tmp_path, "work3", force=True))


def test_a_replay_after_a_code_version_bump_mixes_a_new_track(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = vocals_converted("wav")

    def at(version: str, name: str) -> StageContext:
        ctx = context(store, tmp_path, name)
        ctx.settings = Settings(
            storage={"presign_expiry_s": 3600}, runtime={"code_version": version}
        )
        return ctx

    mixes: list[int] = []
    real_mix = agent.mix_track

    def counting(*args: object, **kwargs: object) -> object:
        mixes.append(1)
        return real_mix(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(agent, "mix_track", counting)
    first = agent.handle(event, at("1", "v1"))
    same = agent.handle(event, at("1", "v1-again"))
    assert same.track_key == first.track_key and same.cache_hit and len(mixes) == 1
    # Another job with the same stems and options: the same track, nothing mixed.
    other_job = event.model_copy(update={"job_id": "job-43"})
    assert agent.handle(other_job, at("1", "v1-other")).track_key == first.track_key
    assert len(mixes) == 1

    bumped = agent.handle(event, at("2", "v2"))
    assert bumped.track_key != first.track_key and not bumped.cache_hit and len(mixes) == 2
    assert store.exists(first.track_key) and store.exists(bumped.track_key)


def test_handler_without_backing_vocals_and_missing_stem(store: LocalStore, tmp_path: Path) -> None:
    ready = agent.handle(vocals_converted("wav", backing=False), context(store, tmp_path, "w1"))
    assert ready.keys.backing_vocals is None and store.exists(ready.track_key)

    broken = vocals_converted("m4a")
    broken.keys.accompaniment = "stems/abc/nothing-here.flac"
    with pytest.raises(StageError) as error:
        agent.handle(broken, context(store, tmp_path, "w2"))
    assert error.value.code == "missing_object"
    assert not [key for key in store.list("tracks/") if key.endswith(".m4a")]


def _image_checks(png: Path) -> np.ndarray:
    assert png.stat().st_size > 30_000
    image = matplotlib.image.imread(str(png))
    # Not a blank page: many distinct colours and real contrast.
    assert image[..., :3].std() > 0.1
    assert len(np.unique((image[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 500
    return image


def test_report_renders_waveforms_spectrograms_and_f0(tmp_path: Path) -> None:
    original = write_stem(tmp_path / "orig.flac", sung(3.0, RATE), RATE)
    converted = write_stem(tmp_path / "conv.flac", sung(3.0, 40000, CONVERTED_SHIFT), 40000)
    band = audio_synth.accompaniment(3.0, RATE, seed=2)
    mix = write_stem(tmp_path / "mix.wav", audio_synth.mix(sung(3.0, RATE), band))

    png = render_report(original, converted, mix, tmp_path / "out" / "report.png")

    image = _image_checks(png)
    # Fewer inputs, fewer rows: only the converted vocals (one row plus its f0 panel).
    small = _image_checks(render_report(None, converted, None, tmp_path / "small.png"))
    assert small.shape[0] < image.shape[0]
    with pytest.raises(ValueError):
        render_report(None, None, None, tmp_path / "nothing.png")


def test_report_pitch_tracks_find_the_transpose(tmp_path: Path) -> None:
    """The f0 panel's title states the converted-minus-original shift; it must be right."""
    original = report._load(report.ORIGINAL, write_stem(tmp_path / "o.flac", sung(3.0, RATE)))
    converted = report._load(
        report.CONVERTED,
        write_stem(tmp_path / "c.flac", sung(3.0, 40000, CONVERTED_SHIFT), 40000),
    )
    _, original_f0 = report._f0(original.audio)
    _, converted_f0 = report._f0(converted.audio)

    shift = report._median_shift_semitones(original_f0, converted_f0)
    assert shift == pytest.approx(CONVERTED_SHIFT, abs=0.2)
    voiced = original_f0[np.isfinite(original_f0)]
    assert voiced.size > 50 and 200 < np.median(voiced) < 340  # the melody's range


def test_report_for_job_reads_the_keys_from_the_job_state(
    store: LocalStore, tmp_path: Path
) -> None:
    event = vocals_converted("mp3")
    # Before the mixer ran: only the converter's event is recorded (no track yet).
    put_json(store, job_event_key(JOB, "vocals.converted"), json.loads(event.model_dump_json()))
    early = matplotlib.image.imread(str(report_for_job(store, JOB, tmp_path / "early.png")))

    ready = agent.handle(event, context(store, tmp_path, "work"))
    put_json(store, job_event_key(JOB, "track.ready"), json.loads(ready.model_dump_json()))
    done = _image_checks(report_for_job(store, JOB, tmp_path / "done.png"))

    assert done.shape[0] > early.shape[0]  # the mix row joined once the track existed
    with pytest.raises(LookupError):
        report_for_job(store, "no-such-job", tmp_path / "none.png")
