from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from streams import keys
from streams.settings import Settings
from streams.store import LocalStore, ObjectNotFound, StoreError
from streams.topics import STAGES, all_topics, dlq, physical


def test_content_digest_depends_on_every_input() -> None:
    base = keys.content_digest(["a" * 64], {"model": "x", "chunk": 30}, "1", "stems")
    assert base == keys.content_digest(["a" * 64], {"chunk": 30, "model": "x"}, "1", "stems")
    assert base != keys.content_digest(["b" * 64], {"model": "x", "chunk": 30}, "1", "stems")
    assert base != keys.content_digest(["a" * 64], {"model": "y", "chunk": 30}, "1", "stems")
    assert base != keys.content_digest(["a" * 64], {"model": "x", "chunk": 30}, "2", "stems")
    assert base != keys.content_digest(["a" * 64], {"model": "x", "chunk": 30}, "1", "voices")
    assert len(base) == 64


def test_sha256_file_matches_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    assert keys.sha256_file(path) == keys.sha256_bytes(data)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SINGTOME_TOPIC_PARTITIONS", "12")
    monkeypatch.setenv("SINGTOME_BROKER_URL", "kafka://a:9092;b:9092")
    monkeypatch.setenv("SINGTOME_HUBERT_PATH", "/models/hubert_base.pt")
    settings = Settings()
    assert settings.broker.topic_partitions == 12
    assert settings.models.hubert_path == Path("/models/hubert_base.pt")
    from streams.admin import bootstrap_servers

    assert bootstrap_servers(settings) == "a:9092,b:9092"


def test_settings_reject_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SINGTOME_TOPIC_PARTITIONS", "0")
    with pytest.raises(ValidationError, match="topic_partitions"):
        Settings()


def test_every_setting_is_documented() -> None:
    from streams.settings import settings_markdown, variables

    table = settings_markdown()
    for variable in variables(Settings):
        for name in variable.names:
            assert f"`{name}`" in table
    doc = (Path(__file__).resolve().parents[2] / "docs" / "settings.md").read_text()
    assert table in doc, "docs/settings.md is stale: regenerate with `singtome settings`"


def test_topic_table() -> None:
    topics = all_topics()
    assert len(topics) == len(set(topics))
    for stage in STAGES.values():
        assert stage.consumes in topics and stage.produces in topics
        assert dlq(stage.consumes) in topics
    assert physical("song.uploaded", "staging.") == "staging.song.uploaded"


def test_local_store(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("a/b.txt", b"one")
    assert store.get_bytes("a/b.txt") == b"one" and store.exists("a/b.txt")
    assert store.put_if_absent("locks/x", b"1") and not store.put_if_absent("locks/x", b"2")
    assert list(store.list("a/")) == ["a/b.txt"]
    with pytest.raises(ObjectNotFound):
        store.get_bytes("nope")
    with pytest.raises(StoreError):
        store.put_bytes("../escape", b"")
    store.delete("a/b.txt")
    assert not store.exists("a/b.txt")


def test_every_error_code_is_documented() -> None:
    from foundation.errors import error_codes_markdown

    doc = (Path(__file__).resolve().parents[2] / "docs" / "reliability.md").read_text()
    assert error_codes_markdown() in doc, "docs/reliability.md is stale: regenerate its table"
