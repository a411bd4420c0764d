"""The key policy: which S3 keys a job may name, and the normal form of a key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from foundation.errors import StageError
from schemas.events import JobOptions, ObjectKeys, SongUploaded, VocalsSeparated, VoiceOptions
from streams.keypolicy import KeyPolicy, confined, named_keys
from streams.keys import key_form_problem
from streams.settings import Settings
from streams.store import LocalStore
from tests.events import voice_options

DIGEST = "ab" * 32
JOB = "job-a"


def _policy(**settings: object) -> KeyPolicy:
    return KeyPolicy(Settings(**settings))  # type: ignore[arg-type]


def _code(policy: KeyPolicy, key: object, job_id: str = JOB) -> str | None:
    try:
        policy.check(job_id, key)
    except StageError as exc:
        return exc.code
    return None


@pytest.mark.parametrize(
    "key",
    [
        "uploads/job-a/song.wav",
        "uploads/job-a/voice/",
        "uploads/job-a/voice",  # a prefix inside the job's own uploads
        "uploads/job-a/deep/er/take 1 (final).wav",
        "uploads/job-a/sång.wav",  # UTF-8 is fine in S3 keys
        f"stems/{DIGEST}/vocals.flac",
        f"voices/{DIGEST}/model.pth",
        f"voices/{DIGEST}/",
        f"converted/{DIGEST}/vocals.flac",
        f"tracks/{DIGEST}/cover.mp3",
    ],
)
def test_the_jobs_own_uploads_and_pipeline_outputs_are_allowed(key: str) -> None:
    assert _code(_policy(), key) is None


@pytest.mark.parametrize(
    ("key", "code"),
    [
        ("uploads/job-b/song.wav", "forbidden_key"),  # another job's upload
        ("uploads/", "forbidden_key"),  # every job's uploads
        ("uploads/job-a", "forbidden_key"),  # would also list uploads/job-ab/...
        ("uploads/job-ab/song.wav", "forbidden_key"),
        ("uploads/job-a/../job-b/song.wav", "forbidden_key"),
        ("uploads/job-a/./song.wav", "forbidden_key"),
        ("../otherbucket/x", "forbidden_key"),
        ("/uploads/job-a/song.wav", "forbidden_key"),
        ("s3://other/x", "forbidden_key"),
        ("S3://other/x", "forbidden_key"),
        ("file:///etc/passwd", "forbidden_key"),
        ("https://example.com/x.wav", "forbidden_key"),
        ("jobs/job-a/track.ready.json", "forbidden_key"),  # job state is not input
        ("locks/voice-x", "forbidden_key"),
        ("stems/", "forbidden_key"),
        ("stems/short/vocals.flac", "forbidden_key"),  # not a content digest
        (f"stems/{DIGEST.upper()}/vocals.flac", "forbidden_key"),
        (f"stems/{DIGEST}", "forbidden_key"),
        ("tracks/job-b/cover.mp3", "forbidden_key"),
        ("tracks/job-a/cover.mp3", "forbidden_key"),  # tracks are named by content, not by job
        ("models/shared/v.pth", "forbidden_key"),  # no shared prefix configured
        ("", "invalid_key"),
        (None, "invalid_key"),
        (7, "invalid_key"),
        ("uploads/job-a/" + "x" * 1100, "invalid_key"),
        ("uploads/job-a/" + "é" * 600, "invalid_key"),  # 1200 bytes in UTF-8
        ("uploads/job-a/a\nb.wav", "invalid_key"),
        ("uploads/job-a/a\x00b.wav", "invalid_key"),
        ("uploads/job-a/a\x7fb.wav", "invalid_key"),
        ("uploads/job-a/a\\..\\b.wav", "invalid_key"),
        ("uploads/job-a//song.wav", "invalid_key"),
        ("uploads/job-a/\ud800.wav", "invalid_key"),
    ],
)
def test_everything_else_is_refused_with_its_code(key: object, code: str) -> None:
    assert _code(_policy(), key) == code


def test_normal_form_is_checked_before_the_namespace() -> None:
    assert key_form_problem("uploads/job-a/song.wav") is None
    problem = key_form_problem("uploads/job-b/../job-a/song.wav")
    assert problem and problem[0] == "forbidden_key" and "'..'" in problem[1]


def test_shared_model_prefixes_and_the_upload_pattern_are_settings() -> None:
    policy = _policy(
        storage={
            "shared_model_prefixes": ["models/shared/"],
            "upload_prefix": "tenants/acme/in/{job_id}/",
        }
    )
    assert _code(policy, "models/shared/singer.pth") is None
    assert _code(policy, "models/sharedx/singer.pth") == "forbidden_key"
    assert _code(policy, "tenants/acme/in/job-a/song.wav") is None
    assert _code(policy, "uploads/job-a/song.wav") == "forbidden_key"
    assert _code(policy, "tenants/acme/in/job-b/song.wav") == "forbidden_key"


@pytest.mark.parametrize(
    "pattern",
    ["uploads/", "uploads/{job_id}", "uploads/x{job_id}/", "/u/{job_id}/", "u/../{job_id}/",
     "u/{job_id}/{job_id}/", "u/{other}/{job_id}/", "s3://b/{job_id}/"],
)  # fmt: skip
def test_an_upload_pattern_that_could_leak_is_refused(pattern: str) -> None:
    with pytest.raises(ValidationError):
        Settings(storage={"upload_prefix": pattern})


@pytest.mark.parametrize("prefix", ["", "models", "/models/", "../models/", "models//x/"])
def test_a_shared_prefix_must_be_a_normal_prefix(prefix: str) -> None:
    with pytest.raises(ValidationError):
        Settings(storage={"shared_model_prefixes": [prefix]})


def test_every_key_field_of_every_event_is_named() -> None:
    event = VocalsSeparated(
        job_id=JOB,
        keys=ObjectKeys(song="a", vocals="b", accompaniment="g", backing_vocals="c"),
        options=JobOptions(voice=VoiceOptions(dataset_key="d", model_key="e", index_key="f")),
        sample_rate=1,
        duration_s=1.0,
        separator_model="x",
    )
    assert dict(named_keys(event)) == {
        "keys.song": "a",
        "keys.vocals": "b",
        "keys.accompaniment": "g",
        "keys.backing_vocals": "c",
        "options.voice.dataset_key": "d",
        "options.voice.model_key": "e",
        "options.voice.index_key": "f",
    }


def test_check_event_names_the_field() -> None:
    event = SongUploaded(
        job_id=JOB, keys=ObjectKeys(song="uploads/job-a/song.wav"), options=voice_options(JOB)
    )
    _policy().check_event(event)
    event.options.voice.dataset_key = "uploads/"
    with pytest.raises(StageError) as caught:
        _policy().check_event(event)
    assert caught.value.code == "forbidden_key"
    assert "options.voice.dataset_key" in caught.value.message


def test_the_job_store_checks_reads_and_confines_downloads(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("uploads/job-a/song.wav", b"mine")
    store.put_bytes("uploads/job-b/song.wav", b"theirs")
    workdir = tmp_path / "work"
    workdir.mkdir()
    view = _policy().store_for(store, JOB, workdir)
    assert view.get_bytes("uploads/job-a/song.wav") == b"mine"
    assert view.get_file("uploads/job-a/song.wav", workdir / "in" / "song.wav").read_bytes()
    assert list(view.list("uploads/job-a/")) == ["uploads/job-a/song.wav"]
    for read in (
        lambda: view.get_bytes("uploads/job-b/song.wav"),
        lambda: view.exists("uploads/job-b/song.wav"),
        lambda: view.size("uploads/job-b/song.wav"),
        lambda: view.presign("uploads/job-b/song.wav", 60),
        lambda: list(view.list("uploads/")),
        lambda: view.get_file("uploads/job-b/song.wav", workdir / "x.wav"),
        lambda: view.get_file("uploads/job-a/song.wav", workdir / ".." / "escaped.wav"),
        lambda: view.get_file("uploads/job-a/song.wav", tmp_path / "elsewhere.wav"),
    ):
        with pytest.raises(StageError) as caught:
            read()
        assert caught.value.code == "forbidden_key"
    assert not (tmp_path / "escaped.wav").exists() and not (tmp_path / "elsewhere.wav").exists()
    # Writes go to keys the stage derives itself: held to the normal form only.
    view.put_bytes(f"stems/{DIGEST}/vocals.flac", b"v")
    with pytest.raises(StageError):
        view.put_bytes("uploads/job-a/../../x", b"v")


@pytest.mark.parametrize("relative", ["../x.wav", "a/../../x.wav", "/etc/x.wav", "", ".", "a/.."])
def test_confined_paths_stay_strictly_inside(tmp_path: Path, relative: str) -> None:
    with pytest.raises(StageError) as caught:
        confined(tmp_path / "dataset", relative)
    assert caught.value.code == "forbidden_key"
    assert confined(tmp_path / "dataset", "a/b.wav") == (tmp_path / "dataset/a/b.wav").resolve()
