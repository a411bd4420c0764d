"""The real stage workers against the real broker and S3 server.

One worker process per stage, with the real handlers (Spleeter separation, the WORLD fallback
voice, the mixer). Each stage gets a bad input, which must end in ``track.failed`` with its own
code, and good inputs, which must still be answered by the same worker afterwards. The last test
runs a whole cover through all four.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from frontends import demo_audio as audio_synth
from frontends.stack import StackConfig
from schemas.events import (
    JobOptions,
    ObjectKeys,
    SongUploaded,
    TrackFailed,
    TrackReady,
    VocalsConverted,
    VocalsSeparated,
    VoiceOptions,
    VoiceTrained,
)
from streams.client import publish
from tests.pipeline import Pipeline

SR = 44100


@pytest.fixture(scope="module")
def line(stack: StackConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    pipeline = Pipeline(stack, logs=tmp_path_factory.mktemp("stage-logs"))
    try:
        started = [
            pipeline.start_worker(s, wait=False)
            for s in ("separator", "trainer", "converter", "mixer")
        ]
        for proc, port in started:
            pipeline.wait_ready(proc, port, timeout_s=180)
        yield pipeline
    finally:
        pipeline.stop()


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A 4 s song, its bare vocal, and a two-take voice dataset of another voice, as WAV bytes."""
    vocal, _ = audio_synth.sung_vocal(4.0, sr=SR, seed=3)
    band = audio_synth.accompaniment(4.0, sr=SR, seed=3)
    song = audio_synth.mix(vocal, band, -3.0)

    def wav(samples: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        sf.write(buffer, samples, SR, format="WAV")
        return buffer.getvalue()

    takes = {}
    for i in range(2):
        speech = audio_synth.speech_voice(5.0, SR, voice="en+m3", seed=i)
        takes[f"take{i}.wav"] = wav(speech)
    return {"song.wav": wav(song), "vocal.wav": wav(vocal), **takes}


def _put(line: Pipeline, key: str, data: bytes) -> str:
    line.store.put_bytes(key, data)
    return key


def _dataset(line: Pipeline, job: str, audio: dict[str, bytes]) -> str:
    prefix = f"uploads/{job}/voice/"
    for name in ("take0.wav", "take1.wav"):
        _put(line, prefix + name, audio[name])
    return prefix


# A stem the converter carries on to the mixer without reading it (a key the policy allows).
CARRIED_STEM = "stems/" + "c" * 64 + "/accompaniment.flac"


def _voice(job: str) -> JobOptions:
    """Options naming a voice dataset (the separator's tests end before the trainer reads it)."""
    return JobOptions(voice=VoiceOptions(dataset_key=f"uploads/{job}/voice/"))


def _failures(line: Pipeline, *job_ids: str) -> dict[str, TrackFailed]:
    return line.by_job("track.failed", set(job_ids))  # type: ignore[return-value]


def test_separator_bad_song_a_cappella_and_good_song(
    line: Pipeline, audio: dict[str, bytes]
) -> None:
    bad = SongUploaded(
        job_id="sep-bad",
        keys=ObjectKeys(song=_put(line, "uploads/sep-bad/song.mp3", b"<html>not audio</html>")),
        options=_voice("sep-bad"),
    )
    good = SongUploaded(
        job_id="sep-good",
        keys=ObjectKeys(song=_put(line, "uploads/sep-good/song.wav", audio["song.wav"])),
        options=_voice("sep-good"),
    )
    bare = SongUploaded(
        job_id="sep-bare",
        keys=ObjectKeys(song=_put(line, "uploads/sep-bare/song.wav", audio["vocal.wav"])),
        options=_voice("sep-bare"),
    )
    bare.options.separator.skip = True
    publish(line.settings, bad, good, bare)

    failed = _failures(line, "sep-bad")
    assert failed["sep-bad"].code == "not_audio" and failed["sep-bad"].stage == "separator"
    separated = line.by_job("vocals.separated", {"sep-good", "sep-bare"})
    assert set(separated) == {"sep-good", "sep-bare"}
    for event in separated.values():
        assert isinstance(event, VocalsSeparated)
        assert event.sample_rate == SR and event.duration_s == pytest.approx(4.0, abs=0.05)
        vocals, rate = sf.read(io.BytesIO(line.store.get_bytes(event.keys.vocals or "")))
        assert rate == SR and vocals.shape == (round(4.0 * SR), 2)
    accompaniment, _ = sf.read(
        io.BytesIO(line.store.get_bytes(separated["sep-bare"].keys.accompaniment or ""))
    )
    assert not np.any(accompaniment), "a cappella input: silent accompaniment"


def test_trainer_empty_dataset_fails_then_trains_and_reuses(
    line: Pipeline, audio: dict[str, bytes]
) -> None:
    _put(line, "uploads/tr-bad/voice/readme.txt", b"no audio here")

    def separated(job_id: str) -> VocalsSeparated:
        # The trainer reads only the dataset; the keys it carries on are the job's own.
        own = f"uploads/{job_id}"
        return VocalsSeparated(
            job_id=job_id,
            keys=ObjectKeys(
                song=f"{own}/song.wav",
                vocals=f"{own}/vocals.wav",
                accompaniment=f"{own}/accompaniment.wav",
            ),
            options=_voice(job_id),
            sample_rate=SR,
            duration_s=1.0,
            separator_model="x",
        )

    bad = separated("tr-bad")
    first = separated("tr-good-1")
    first.options.voice.dataset_key = _dataset(line, "tr-good-1", audio)
    second = separated("tr-good-2")
    second.options.voice.dataset_key = _dataset(line, "tr-good-2", audio)  # same voice again
    publish(line.settings, bad, first, second)

    assert _failures(line, "tr-bad")["tr-bad"].code == "dataset_empty"
    trained = line.by_job("voice.trained", {"tr-good-1", "tr-good-2"})
    one, two = trained["tr-good-1"], trained["tr-good-2"]
    assert isinstance(one, VoiceTrained) and isinstance(two, VoiceTrained)
    assert one.voice_kind == "world", "no HuBERT configured: the labelled fallback"
    # Same voice twice: whichever job the worker took first trained it; the other reused it.
    assert sorted([one.cache_hit, two.cache_hit]) == [False, True]
    assert one.keys.voice_model == two.keys.voice_model
    assert line.store.exists(one.keys.voice_model or "")


def test_converter_silent_vocals_fail_then_converts(
    line: Pipeline, audio: dict[str, bytes]
) -> None:
    profile = line.by_job("voice.trained", {"tr-good-1"})["tr-good-1"].keys.voice_model
    silent = io.BytesIO()
    sf.write(silent, np.zeros(SR * 2), SR, format="WAV")
    bad = VoiceTrained(
        job_id="cv-bad",
        voice_kind="world",
        keys=ObjectKeys(
            vocals=_put(line, "uploads/cv-bad/v.wav", silent.getvalue()),
            accompaniment=CARRIED_STEM,  # carried on to the mixer
            voice_model=profile,
        ),
    )
    good = VoiceTrained(
        job_id="cv-good",
        voice_kind="world",
        keys=ObjectKeys(
            vocals=_put(line, "uploads/cv-good/v.wav", audio["vocal.wav"]),
            accompaniment=CARRIED_STEM,
            voice_model=profile,
        ),
    )
    publish(line.settings, bad, good)

    assert _failures(line, "cv-bad")["cv-bad"].code == "silent_audio"
    converted = line.by_job("vocals.converted", {"cv-good"})
    event = converted["cv-good"]
    assert isinstance(event, VocalsConverted) and event.backend == "world"
    samples, rate = sf.read(io.BytesIO(line.store.get_bytes(event.keys.converted_vocals or "")))
    assert rate == SR and len(samples) == pytest.approx(4.0 * SR, abs=SR * 0.05)


def test_mixer_missing_stem_fails_then_mixes(line: Pipeline, audio: dict[str, bytes]) -> None:
    # A job names only its own uploads (and pipeline outputs by digest): one copy per job.
    vocals = {
        j: _put(line, f"uploads/{j}/vocals.wav", audio["vocal.wav"]) for j in ("mx-bad", "mx-good")
    }
    song = _put(line, "uploads/mx-good/song.wav", audio["song.wav"])
    never_stored = "stems/" + "0" * 64 + "/accompaniment.flac"
    bad = VocalsConverted(
        job_id="mx-bad",
        backend="world",
        sample_rate=SR,
        duration_s=4.0,
        keys=ObjectKeys(converted_vocals=vocals["mx-bad"], accompaniment=never_stored),
    )
    good = VocalsConverted(
        job_id="mx-good",
        backend="world",
        sample_rate=SR,
        duration_s=4.0,
        keys=ObjectKeys(converted_vocals=vocals["mx-good"], accompaniment=song),
    )
    good.options.output.format = "flac"
    publish(line.settings, bad, good)

    assert _failures(line, "mx-bad")["mx-bad"].code == "missing_object"
    ready = line.by_job("track.ready", {"mx-good"})
    event = ready["mx-good"]
    assert isinstance(event, TrackReady) and event.format == "flac"
    track, rate = sf.read(io.BytesIO(line.store.get_bytes(event.track_key)))
    assert len(track) / rate == pytest.approx(4.0, abs=0.05)
    assert pyloudnorm.Meter(rate).integrated_loudness(track) == pytest.approx(-14.0, abs=1.0)
    assert event.download_url and event.download_url.startswith("http")


def test_whole_cover_through_four_workers(
    line: Pipeline, audio: dict[str, bytes], tmp_path: Path
) -> None:
    options = JobOptions()
    options.voice.dataset_key = _dataset(line, "e2e", audio)
    options.output.format = "mp3"
    options.output.title = "Demo"
    event = SongUploaded(
        job_id="e2e",
        options=options,
        keys=ObjectKeys(song=_put(line, "uploads/e2e/song.wav", audio["song.wav"])),
    )
    publish(line.settings, event)

    ready = line.by_job("track.ready", {"e2e"}, timeout_s=600)
    track = ready["e2e"]
    assert isinstance(track, TrackReady)
    assert [r.stage for r in track.history] == ["separator", "trainer", "converter", "mixer"]
    local = tmp_path / "cover.mp3"
    local.write_bytes(line.store.get_bytes(track.track_key))
    from foundation.audio import decode
    from foundation.probe import probe

    samples, rate = decode(local)
    assert probe(local).duration_s == pytest.approx(4.0, abs=0.1)
    assert pyloudnorm.Meter(rate).integrated_loudness(samples) == pytest.approx(-14.0, abs=1.0)
    assert track.loudness_lufs == pytest.approx(-14.0, abs=1.0)
    assert set(track.timings_s) >= {"separator", "trainer", "converter", "mixer"}


JAVA_CLIENT = Path(__file__).resolve().parents[2] / "clients" / "java"


def test_java_client_runs_a_job_and_gets_track_failed_for_a_malformed_event(
    line: Pipeline, audio: dict[str, bytes], tmp_path: Path
) -> None:
    """clients/java's JUnit tests against this stack and these four real workers: a cover from
    the JVM (track.ready, the track downloaded from its presigned URL) and a malformed event
    answered by track.failed. The schemas it validates with are exported here, now."""
    import subprocess
    import xml.etree.ElementTree as ET

    from tests.pipeline import SINGTOME

    schemas = tmp_path / "schemas"
    subprocess.run(
        [SINGTOME, "schemas", "export", str(schemas)],
        env=line.env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    song = tmp_path / "song.wav"
    song.write_bytes(audio["song.wav"])
    voice = tmp_path / "voice"
    voice.mkdir()
    for name in ("take0.wav", "take1.wav"):
        (voice / name).write_bytes(audio[name])
    reports = JAVA_CLIENT / "target" / "surefire-reports"
    shutil.rmtree(reports, ignore_errors=True)
    env = {
        **line.env,
        "SINGTOME_SCHEMA_DIR": str(schemas),
        "SINGTOME_JAVA_SONG": str(song),
        "SINGTOME_JAVA_VOICE_DIR": str(voice),
        "SINGTOME_CLIENT_GROUP": f"{line.prefix}java-backend",
    }
    # -o: scripts/setup.sh fetched every dependency and plugin beforehand.
    result = subprocess.run(
        ["mvn", "-B", "-q", "-o", "test"],
        cwd=JAVA_CLIENT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    (report,) = reports.glob("TEST-*.xml")
    suite = ET.parse(report).getroot()
    counts = {
        name: int(suite.get(name, "0")) for name in ("tests", "failures", "errors", "skipped")
    }
    assert counts == {"tests": 2, "failures": 0, "errors": 0, "skipped": 0}
