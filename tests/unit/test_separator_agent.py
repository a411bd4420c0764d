"""The separator agent's handler with a local object store: keys, caching, events, the CLI call."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from agents.separator import agent
from agents.separator.backends.spleeter import SpleeterBackend
from agents.separator.cli import separate_command
from agents.separator.stage import SeparationParams
from foundation.errors import StageError
from frontends import demo_audio as synth
from schemas.events import (
    JobOptions,
    ObjectKeys,
    SeparatorOptions,
    SongUploaded,
    VocalsSeparated,
    VoiceOptions,
)
from streams.keys import stem_key
from streams.settings import Settings
from streams.stage import StageContext
from streams.store import LocalStore

SONG_S = 3.0
VOICE = VoiceOptions(dataset_key="uploads/job-1/voice/")


@pytest.fixture(scope="module")
def song_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    vocal, _ = synth.sung_vocal(SONG_S, seed=21)
    band = synth.accompaniment(SONG_S, seed=21)
    folder = tmp_path_factory.mktemp("upload")
    wav = synth.write(folder / "song.wav", synth.mix(vocal, band))
    return synth.encode_with_ffmpeg(wav, folder / "song.mp3", "-b:a", "192k")


@pytest.fixture
def store(tmp_path: Path, song_file: Path) -> LocalStore:
    store = LocalStore(tmp_path / "bucket")
    store.put_file("uploads/job-1/song.mp3", song_file)
    return store


def _event(**separator: object) -> SongUploaded:
    return SongUploaded(
        job_id="job-1",
        keys=ObjectKeys(song="uploads/job-1/song.mp3"),
        options=JobOptions(separator=SeparatorOptions(**separator), voice=VOICE),  # type: ignore[arg-type]
    )


def _context(
    store: LocalStore, workdir: Path, settings: Settings | None = None, **kw: object
) -> StageContext:
    return StageContext(
        stage="separator",
        settings=settings or Settings(),
        store=store,
        workdir=workdir,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def spleeter_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts frames passed to the spleeter model, keeping its real behaviour."""
    calls: list[int] = []
    real: Callable[[SpleeterBackend, np.ndarray], dict[str, np.ndarray]] = SpleeterBackend.separate

    def counting(self: SpleeterBackend, audio: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(len(audio))
        return real(self, audio)

    monkeypatch.setattr(SpleeterBackend, "separate", counting)
    return calls


def test_handler_stores_stems_then_reuses_them(
    store: LocalStore, tmp_path: Path, spleeter_calls: list[int]
) -> None:
    progress: list[float] = []
    event = _event()
    first = agent.handle(
        event, _context(store, tmp_path / "w1", progress=lambda f, m: progress.append(f))
    )

    assert isinstance(first, VocalsSeparated)
    assert first.job_id == "job-1" and first.event_id != event.event_id
    assert first.cache_hit is False
    assert first.separator_model == "spleeter"
    assert first.sample_rate == 44100
    assert first.duration_s == pytest.approx(SONG_S, abs=0.01)
    assert first.keys.song == "uploads/job-1/song.mp3"
    assert first.keys.backing_vocals is None
    assert (
        first.keys.vocals
        and first.keys.vocals.startswith("stems/")
        and first.keys.vocals.endswith("/vocals.flac")
    )
    for key in (first.keys.vocals, first.keys.accompaniment):
        assert key is not None and store.exists(key)
        local = store.get_file(key, tmp_path / "check" / Path(key).name)
        info = sf.info(str(local))
        assert (info.samplerate, info.channels, info.format) == (44100, 2, "FLAC")
        assert info.frames == round(SONG_S * 44100)
    assert spleeter_calls, "the model ran"
    assert progress and progress[-1] == 1.0

    runs = len(spleeter_calls)
    second = agent.handle(event, _context(store, tmp_path / "w2"))
    assert second.cache_hit is True
    assert len(spleeter_calls) == runs  # nothing recomputed
    assert second.keys.vocals == first.keys.vocals
    assert second.keys.accompaniment == first.keys.accompaniment
    assert (second.duration_s, second.sample_rate, second.separator_model) == (
        first.duration_s,
        first.sample_rate,
        first.separator_model,
    )

    forced = agent.handle(event, _context(store, tmp_path / "w3", force=True))
    assert forced.cache_hit is False
    assert len(spleeter_calls) > runs


def test_a_missing_stem_means_recompute(
    store: LocalStore, tmp_path: Path, spleeter_calls: list[int]
) -> None:
    first = agent.handle(_event(), _context(store, tmp_path / "w1"))
    assert first.keys.accompaniment is not None
    store.delete(first.keys.accompaniment)
    runs = len(spleeter_calls)
    again = agent.handle(_event(), _context(store, tmp_path / "w2"))
    assert again.cache_hit is False
    assert len(spleeter_calls) > runs
    assert store.exists(first.keys.accompaniment)


def test_a_cappella_job(store: LocalStore, tmp_path: Path, spleeter_calls: list[int]) -> None:
    result = agent.handle(_event(skip=True), _context(store, tmp_path / "w"))
    assert result.separator_model == "a_cappella"
    assert spleeter_calls == []
    assert result.keys.accompaniment is not None
    band = store.get_file(result.keys.accompaniment, tmp_path / "band.flac")
    assert not np.any(sf.read(str(band))[0])


def test_missing_song_object(store: LocalStore, tmp_path: Path) -> None:
    event = SongUploaded(
        job_id="job-2",
        keys=ObjectKeys(song="uploads/job-2/nothing.wav"),
        options=JobOptions(voice=VOICE),
    )
    with pytest.raises(StageError) as caught:
        agent.handle(event, _context(store, tmp_path / "w"))
    assert caught.value.code == "missing_object"


def test_bad_song_fails_with_its_code(store: LocalStore, tmp_path: Path) -> None:
    store.put_bytes("uploads/job-3/song.mp3", b"not a song at all" * 100)
    event = SongUploaded(
        job_id="job-3",
        keys=ObjectKeys(song="uploads/job-3/song.mp3"),
        options=JobOptions(voice=VOICE),
    )
    with pytest.raises(StageError) as caught:
        agent.handle(event, _context(store, tmp_path / "w"))
    assert caught.value.code == "not_audio"
    assert not list(store.list("stems/"))


def test_oversized_upload_is_refused_before_download(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_download(*args: object) -> None:
        raise AssertionError("the song must not be downloaded")

    monkeypatch.setattr(store, "get_file", no_download)
    with pytest.raises(StageError) as caught:
        agent.handle(
            _event(), _context(store, tmp_path / "w", Settings(audio={"max_audio_bytes": 1000}))
        )
    assert caught.value.code == "audio_too_large"


def test_karaoke_job_emits_backing_vocals_key(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    class HalfAndHalf:
        def __init__(self, name: str, split: tuple[str, str]) -> None:
            self.name = name
            self.stems = split

        def separate(self, audio: np.ndarray) -> dict[str, np.ndarray]:
            return {self.stems[0]: audio * 0.5, self.stems[1]: audio * 0.5}

    def stand_in(model: str, model_dir: Path, device: str = "cpu") -> HalfAndHalf:
        if model == "kara.pth":
            return HalfAndHalf(model, ("Vocals", "Instrumental"))
        return HalfAndHalf(model, ("vocals", "accompaniment"))

    monkeypatch.setattr("agents.separator.stage.load_backend", stand_in)
    result = agent.handle(_event(karaoke_model="kara.pth"), _context(store, tmp_path / "w"))
    assert result.separator_model == "spleeter + karaoke:kara.pth"
    assert result.keys.backing_vocals is not None
    assert result.keys.backing_vocals.endswith("/backing_vocals.flac")
    assert store.exists(result.keys.backing_vocals)


def _digest(song: Path, params: SeparationParams, settings: Settings, tmp_path: Path) -> str:
    return agent.stems_digest(
        song, params, _context(LocalStore(tmp_path / "s"), tmp_path, settings)
    )


def test_stem_keys_follow_content_and_parameters(song_file: Path, tmp_path: Path) -> None:
    settings = Settings()
    base = _digest(song_file, SeparationParams("spleeter"), settings, tmp_path)
    assert base == _digest(song_file, SeparationParams("spleeter"), Settings(), tmp_path)
    # The worker default and the same model named explicitly are the same separation.
    from_options = SeparationParams.from_options(SeparatorOptions(), settings.separator)
    assert _digest(song_file, from_options, settings, tmp_path) == base
    assert stem_key(base, "vocals") == f"stems/{base}/vocals.flac"

    variants = [
        _digest(song_file, SeparationParams("UVR-MDX-NET-Inst_HQ_3.onnx"), settings, tmp_path),
        _digest(song_file, SeparationParams("spleeter", skip=True), settings, tmp_path),
        _digest(
            song_file, SeparationParams("spleeter", denoise_model="dn.pth"), settings, tmp_path
        ),
        _digest(song_file, SeparationParams("spleeter", karaoke_model="k.pth"), settings, tmp_path),
        _digest(
            song_file,
            SeparationParams("spleeter"),
            Settings(runtime={"code_version": "2"}),
            tmp_path,
        ),
        _digest(
            song_file, SeparationParams("spleeter"), Settings(separator={"chunk_s": 20}), tmp_path
        ),
    ]
    other_song = tmp_path / "other.mp3"
    other_song.write_bytes(song_file.read_bytes() + b"\0")
    variants.append(_digest(other_song, SeparationParams("spleeter"), settings, tmp_path))
    assert len({base, *variants}) == len(variants) + 1


def test_separate_command(song_file: Path, tmp_path: Path) -> None:
    result = separate_command(song_file, model="spleeter", out_dir=tmp_path / "out", skip=True)
    assert set(result.stems) == {"vocals", "accompaniment"}
    assert all(path.parent == tmp_path / "out" and path.is_file() for path in result.stems.values())
    assert result.duration_s == pytest.approx(SONG_S, abs=0.01)
