"""Every environment variable the flat settings had still sets its field in the grouped tree.

The list below is the promise: the variables of docs/settings.md as it stood before the settings
had groups. Each one, set alone to a valid value other than its default, changes exactly the
field it names and nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from operator import attrgetter
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from streams.settings import (
    AudioSettings,
    BrokerSettings,
    ModelsSettings,
    SeparatorSettings,
    Settings,
    variables,
)

# (variable, where it lands, the value set, the value read)
PROMISE: list[tuple[str, str, str, Any]] = [
    ("SINGTOME_BROKER_URL", "broker.url", "kafka://a:9092;b:9092", "kafka://a:9092;b:9092"),
    ("SINGTOME_BROKER_SECURITY_PROTOCOL", "broker.security_protocol", "SASL_SSL", "SASL_SSL"),
    ("SINGTOME_BROKER_SASL_MECHANISM", "broker.sasl_mechanism", "SCRAM-SHA-512", "SCRAM-SHA-512"),
    ("SINGTOME_BROKER_SASL_USERNAME", "broker.sasl_username", "alice", "alice"),
    ("SINGTOME_BROKER_SASL_PASSWORD", "broker.sasl_password", "s3cret", "s3cret"),
    ("SINGTOME_BROKER_SSL_CAFILE", "broker.ssl_cafile", "/etc/ca.pem", "/etc/ca.pem"),
    ("SINGTOME_TOPIC_PREFIX", "broker.topic_prefix", "staging.", "staging."),
    ("SINGTOME_TOPIC_PARTITIONS", "broker.topic_partitions", "12", 12),
    ("SINGTOME_TOPIC_REPLICATION", "broker.topic_replication", "3", 3),
    ("SINGTOME_GROUP_VERSION", "broker.group_version", "2", 2),
    ("SINGTOME_SESSION_TIMEOUT_S", "broker.session_timeout_s", "10", 10.0),
    ("SINGTOME_HEARTBEAT_INTERVAL_S", "broker.heartbeat_interval_s", "1", 1.0),
    ("SINGTOME_REBALANCE_TIMEOUT_S", "broker.rebalance_timeout_s", "20", 20.0),
    ("SINGTOME_MAX_POLL_INTERVAL_S", "broker.max_poll_interval_s", "600", 600.0),
    ("SINGTOME_STAGE_TIMEOUT_S", "runtime.stage_timeout_s", "120", 120.0),
    ("SINGTOME_SHUTDOWN_GRACE_S", "runtime.shutdown_grace_s", "90", 90.0),
    ("SINGTOME_SHUTDOWN_LEAVE_S", "runtime.shutdown_leave_s", "5", 5.0),
    ("SINGTOME_STUCK_GRACE_S", "runtime.stuck_grace_s", "30", 30.0),
    ("SINGTOME_MAX_MESSAGE_BYTES", "broker.max_message_bytes", "2097152", 2097152),
    ("SINGTOME_SEND_RETRIES", "broker.send_retries", "2", 2),
    ("SINGTOME_SEND_TIMEOUT_S", "broker.send_timeout_s", "12.5", 12.5),
    ("SINGTOME_S3_ENDPOINT_URL", "storage.endpoint_url", "http://s3:8333", "http://s3:8333"),
    ("SINGTOME_S3_BUCKET", "storage.bucket", "covers", "covers"),
    ("SINGTOME_S3_REGION", "storage.region", "eu-west-1", "eu-west-1"),
    ("SINGTOME_S3_MAX_ATTEMPTS", "storage.max_attempts", "3", 3),
    ("SINGTOME_S3_MULTIPART_THRESHOLD_MB", "storage.multipart_threshold_mb", "64", 64),
    ("SINGTOME_PRESIGN_EXPIRY_S", "storage.presign_expiry_s", "3600", 3600),
    ("SINGTOME_UPLOAD_PREFIX", "storage.upload_prefix", "in/{job_id}/", "in/{job_id}/"),
    (
        "SINGTOME_SHARED_MODEL_PREFIXES",
        "storage.shared_model_prefixes",
        '["models/shared/", "models/team/"]',
        ["models/shared/", "models/team/"],
    ),
    ("SINGTOME_TRANSIENT_RETRIES", "runtime.transient_retries", "0", 0),
    ("SINGTOME_RETRY_BACKOFF_S", "runtime.retry_backoff_s", "0.2", 0.2),
    ("SINGTOME_RETRY_BACKOFF_MAX_S", "runtime.retry_backoff_max_s", "4", 4.0),
    ("SINGTOME_MAX_EVENT_BYTES", "broker.max_event_bytes", "65536", 65536),
    ("SINGTOME_MAX_AUDIO_BYTES", "audio.max_audio_bytes", "1000", 1000),
    ("SINGTOME_MAX_AUDIO_DURATION_S", "audio.max_audio_duration_s", "60", 60.0),
    ("SINGTOME_MAX_DATASET_FILES", "audio.max_dataset_files", "10", 10),
    ("SINGTOME_MAX_DATASET_BYTES", "audio.max_dataset_bytes", "1000000", 1000000),
    ("SINGTOME_SILENCE_DBFS", "audio.silence_dbfs", "-50", -50.0),
    ("SINGTOME_MODEL_DIR", "models.dir", "{other_dir}", "{other_dir}"),
    ("SINGTOME_MODEL_MIRROR", "models.mirror", "https://mirror", "https://mirror"),
    ("HF_ENDPOINT", "models.hf_endpoint", "https://hf-mirror", "https://hf-mirror"),
    ("SINGTOME_HF_ENDPOINT", "models.hf_endpoint", "https://hf-2", "https://hf-2"),
    ("SINGTOME_MODEL_MANIFEST", "models.manifest", "/etc/models.json", Path("/etc/models.json")),
    ("SINGTOME_MODEL_CONNECT_TIMEOUT_S", "models.connect_timeout_s", "2", 2.0),
    ("SINGTOME_MODEL_READ_TIMEOUT_S", "models.read_timeout_s", "9", 9.0),
    ("SINGTOME_MODEL_RETRIES", "models.retries", "0", 0),
    ("SINGTOME_SEPARATOR_MODEL", "separator.model", "UVR-MDX.onnx", "UVR-MDX.onnx"),
    ("SINGTOME_SEPARATOR_CHUNK_S", "separator.chunk_s", "15", 15.0),
    ("SINGTOME_SEPARATOR_OVERLAP_S", "separator.overlap_s", "1", 1.0),
    ("SINGTOME_STEM_SAMPLE_RATE", "audio.stem_sample_rate", "48000", 48000),
    ("SINGTOME_HUBERT_PATH", "models.hubert_path", "/m/hubert.pt", Path("/m/hubert.pt")),
    ("SINGTOME_RMVPE_PATH", "models.rmvpe_path", "/m/rmvpe.pt", Path("/m/rmvpe.pt")),
    ("SINGTOME_CREPE_MODEL", "models.crepe_model", "tiny", "tiny"),
    ("SINGTOME_PRETRAINED_DIR", "models.pretrained_dir", "/m/pre", Path("/m/pre")),
    ("SINGTOME_TRAIN_MODEL_SIZE", "trainer.model_size", "tiny", "tiny"),
    ("SINGTOME_TRAIN_PRECISION", "trainer.precision", "bf16", "bf16"),
    ("SINGTOME_CONVERTER_BATCH_PIECES", "converter.batch_pieces", "8", 8),
    ("SINGTOME_CONVERTER_RUNTIME", "converter.runtime", "onnx", "onnx"),
    ("SINGTOME_CONVERTER_TILE_FRAMES", "converter.tile_frames", "128", 128),
    ("SINGTOME_DEVICE", "models.device", "cuda:1", "cuda:1"),
    ("SINGTOME_MODEL_CACHE_MB", "converter.model_cache_mb", "512", 512),
    ("SINGTOME_HEALTH_HOST", "runtime.health_host", "0.0.0.0", "0.0.0.0"),
    ("SINGTOME_HEALTH_PORT", "runtime.health_port", "8080", 8080),
    ("SINGTOME_HEALTH_STALE_S", "runtime.health_stale_s", "12", 12.0),
    ("SINGTOME_HEALTH_CHECK_INTERVAL_S", "runtime.health_check_interval_s", "2", 2.0),
    ("SINGTOME_LOG_LEVEL", "runtime.log_level", "DEBUG", "DEBUG"),
    ("SINGTOME_LOG_FORMAT", "runtime.log_format", "console", "console"),
    ("SINGTOME_CODE_VERSION", "runtime.code_version", "7", "7"),
    ("SINGTOME_STACK_DIR", "stack.dir", "/srv/stack", Path("/srv/stack")),
    ("SINGTOME_STACK_BROKER", "stack.broker", "tansu", "tansu"),
    ("SINGTOME_KAFKA_DIR", "stack.kafka_dir", "/opt/kafka", Path("/opt/kafka")),
    ("SINGTOME_KAFKA_PORT", "stack.kafka_port", "29092", 29092),
    ("SINGTOME_S3_PORT", "stack.s3_port", "28333", 28333),
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No setting from the environment but an empty model dir (so no pulled file is found)."""
    for key in list(os.environ):
        if key.upper().startswith("SINGTOME_") or key.upper() == "HF_ENDPOINT":
            monkeypatch.delenv(key)
    empty = tmp_path / "models"
    empty.mkdir()
    monkeypatch.setenv("SINGTOME_MODEL_DIR", str(empty))
    yield tmp_path


def _flat(settings: Settings) -> dict[str, Any]:
    return {v.path: attrgetter(v.path)(settings) for v in variables(Settings)}


def test_the_promise_names_every_variable_of_the_flat_settings() -> None:
    names = [name for name, *_ in PROMISE]
    assert len(names) == len(set(names)) == 73
    declared = {name for v in variables(Settings) for name in v.names}
    assert set(names) <= declared


@pytest.mark.parametrize(("name", "path", "raw", "read"), PROMISE, ids=[p[0] for p in PROMISE])
def test_each_variable_sets_exactly_its_field(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, name: str, path: str, raw: str, read: Any
) -> None:
    other_dir = clean_env / "other-models"
    other_dir.mkdir()
    raw = raw.replace("{other_dir}", str(other_dir))
    read = Path(str(read).replace("{other_dir}", str(other_dir))) if path == "models.dir" else read
    before = _flat(Settings())
    assert before[path] != read, "the test value must differ from the default"
    monkeypatch.setenv(name, raw)
    after = _flat(Settings())
    assert after[path] == read
    changed = {key for key in before if before[key] != after[key]}
    assert changed == {path}


def test_every_setting_has_its_own_variable_names() -> None:
    names = [name.upper() for v in variables(Settings) for name in v.names]
    assert len(names) == len(set(names))
    paths = [v.path for v in variables(Settings)]
    assert len(paths) == len(set(paths)) == 72


def test_names_are_matched_without_regard_to_case(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("singtome_s3_bucket", "lower")
    monkeypatch.setenv("Hf_Endpoint", "https://mixed")
    settings = Settings()
    assert settings.storage.bucket == "lower"
    assert settings.models.hf_endpoint == "https://mixed"


def test_hf_endpoint_wins_over_its_singtome_name(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SINGTOME_HF_ENDPOINT", "https://second")
    monkeypatch.setenv("HF_ENDPOINT", "https://first")
    assert Settings().models.hf_endpoint == "https://first"


def test_what_the_code_gives_wins_over_the_environment_field_by_field(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SINGTOME_S3_BUCKET", "from-env")
    monkeypatch.setenv("SINGTOME_S3_REGION", "eu-central-1")
    settings = Settings(storage={"bucket": "from-code"})
    assert (settings.storage.bucket, settings.storage.region) == ("from-code", "eu-central-1")
    monkeypatch.setenv("SINGTOME_HUBERT_PATH", "/from/env.pt")
    assert Settings(models={"hubert_path": None}).models.hubert_path is None


def test_unknown_variables_are_ignored(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _flat(Settings())
    monkeypatch.setenv("SINGTOME_NOT_A_SETTING", "1")
    monkeypatch.setenv("SINGTOME_BROKER", '{"url": "kafka://elsewhere:1"}')
    monkeypatch.setenv("SINGTOME_STORAGE__BUCKET", "nested")
    assert _flat(Settings()) == before


def test_a_flat_keyword_says_where_the_setting_is_now(clean_env: Path) -> None:
    with pytest.raises(TypeError, match=r"storage\.bucket"):
        Settings(s3_bucket="b")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"models\.hf_endpoint"):
        Settings(hf_endpoint="https://x")  # type: ignore[call-arg]


def test_a_list_that_is_not_json_is_refused(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SINGTOME_SHARED_MODEL_PREFIXES", "models/shared/")
    with pytest.raises(SettingsError, match="SINGTOME_SHARED_MODEL_PREFIXES"):
        Settings()


def test_an_event_larger_than_a_message_is_refused(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = (
        "SINGTOME_MAX_EVENT_BYTES must not exceed SINGTOME_MAX_MESSAGE_BYTES: an event the "
        "stage accepts must leave room for its answer on the broker"
    )
    monkeypatch.setenv("SINGTOME_MAX_EVENT_BYTES", str(2 * 1024 * 1024))
    with pytest.raises(ValidationError, match=message):
        Settings()
    monkeypatch.setenv("SINGTOME_MAX_MESSAGE_BYTES", str(4 * 1024 * 1024))
    assert Settings().broker.max_event_bytes == 2 * 1024 * 1024
    with pytest.raises(ValidationError, match=message):
        BrokerSettings(max_event_bytes=2 * 1024 * 1024)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SINGTOME_UPLOAD_PREFIX", "uploads/", "must hold {job_id} once, as a whole segment"),
        ("SINGTOME_UPLOAD_PREFIX", "uploads/{job_id}/in", "must end with '/'"),
        ("SINGTOME_UPLOAD_PREFIX", "../{job_id}/", "not a key prefix in normal form"),
        ("SINGTOME_SHARED_MODEL_PREFIXES", '["models"]', "a prefix must end with '/'"),
        ("SINGTOME_SHARED_MODEL_PREFIXES", '["/abs/"]', "'/abs/': "),
    ],
)
def test_key_prefixes_are_refused_with_the_same_messages(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert message in str(caught.value)


def test_pulled_models_fill_in_from_the_model_dir(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = clean_env / "models"
    for name in ("hubert_base.pt", "rmvpe.pt", "pretrained_v2/f0G40k.pth"):
        (models / "rvc" / name).parent.mkdir(parents=True, exist_ok=True)
        (models / "rvc" / name).write_bytes(b"x")
    expected = (
        models / "rvc/hubert_base.pt",
        models / "rvc/rmvpe.pt",
        models / "rvc/pretrained_v2",
    )
    for found in (Settings().models, ModelsSettings(dir=models)):
        assert (found.hubert_path, found.rmvpe_path, found.pretrained_dir) == expected
    monkeypatch.setenv("SINGTOME_RMVPE_PATH", "/elsewhere/rmvpe.pt")
    assert Settings().models.rmvpe_path == Path("/elsewhere/rmvpe.pt")


def test_groups_have_their_defaults_without_the_environment(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage function's groups default to the documented defaults (a notebook needs no
    variables); Settings() reads the variables."""
    monkeypatch.setenv("SINGTOME_SEPARATOR_CHUNK_S", "5")
    monkeypatch.setenv("SINGTOME_SILENCE_DBFS", "-40")
    assert SeparatorSettings().chunk_s == 30.0 and AudioSettings().silence_dbfs == -60.0
    assert Settings().separator.chunk_s == 5.0 and Settings().audio.silence_dbfs == -40.0


def test_updated_copies_with_changes_in_groups(clean_env: Path) -> None:
    settings = Settings()
    changed = settings.updated(storage={"bucket": "b"}, broker={"topic_partitions": 9})
    assert (changed.storage.bucket, changed.broker.topic_partitions) == ("b", 9)
    assert changed.storage.region == settings.storage.region
    assert (settings.storage.bucket, settings.broker.topic_partitions) == ("singtome", 4)
