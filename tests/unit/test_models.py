"""`singtome models`: the manifest, downloads that resume and verify, the lock file, mirrors and a
user's manifest, against a loopback HTTP server serving generated files."""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from frontends.cli import app
from streams.models.fetch import (
    NET_CHUNK,
    PARTIAL_DIR,
    ChecksumMismatch,
    DownloadFailed,
    FetchConfig,
    file_state,
    partial_path,
    pull,
    verify,
)
from streams.models.lock import read_lock
from streams.models.manifest import (
    AUDIO_SEPARATOR_RELEASES,
    ManifestError,
    ModelEntry,
    load_manifest,
    parse_entries,
    separation_entries,
    source_url,
)
from streams.settings import Settings, get_settings
from tests.conftest import CLOSED_LOOPBACK, logging_kept
from tests.modelserver import ModelServer, model_server

SIZE = 700_000  # several of the fetcher's chunks, small enough to be quick


def blob(seed: int, size: int = SIZE) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server() -> Iterator[ModelServer]:
    with model_server() as running:
        yield running


def entry_for(
    server: ModelServer, name: str, data: bytes, *, checksum: bool = True, **fields: Any
) -> ModelEntry:
    path = f"/files/{name}"
    server.add(path, data)
    return ModelEntry(
        name=name,
        kind=fields.pop("kind", "other"),
        url=server.url + path,
        size=fields.pop("size", len(data)),
        sha256=sha(data) if checksum else None,
        licence="test data",
        **fields,
    )


def config(tmp_path: Path, **overrides: Any) -> FetchConfig:
    values: dict[str, Any] = {
        "model_dir": tmp_path / "models",
        "connect_timeout_s": 2.0,
        "read_timeout_s": 5.0,
        "retries": 2,
        "backoff_s": 0.01,
    }
    values.update(overrides)
    return FetchConfig(**values)


def write_manifest(path: Path, entries: list[ModelEntry]) -> Path:
    rows = [e.model_dump(mode="json", exclude={"origin"}) for e in entries]
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Any]:
    """Run `singtome ...` in this process with extra environment; returns (exit code, output)."""
    runner = CliRunner()

    def invoke(*args: str, **env: str | None) -> tuple[int, str]:
        get_settings.cache_clear()
        base = {
            "SINGTOME_MODEL_DIR": str(tmp_path / "models"),
            "SINGTOME_MODEL_RETRIES": "1",
            # The tests' own URLs are loopback already; Hugging Face files go to a closed port.
            "SINGTOME_MODEL_MIRROR": None,
            "HF_ENDPOINT": CLOSED_LOOPBACK,
        }
        with logging_kept():
            result = runner.invoke(app, list(args), env={**base, **env})
        get_settings.cache_clear()
        return result.exit_code, result.output

    yield invoke


# --------------------------------------------------------------------------------------------------
# pulling
# --------------------------------------------------------------------------------------------------


def test_good_pull_installs_the_verified_file_with_progress(
    server: ModelServer, tmp_path: Path
) -> None:
    data = blob(1)
    entry = entry_for(server, "model.bin", data)
    cfg = config(tmp_path)
    seen: list[tuple[int, int | None]] = []
    result = pull(entry, cfg, progress=lambda e, done, total: seen.append((done, total)))
    target = entry.local_path(cfg.model_dir)
    assert result.status == "downloaded" and result.path == target
    assert target.read_bytes() == data
    assert seen[-1] == (SIZE, SIZE) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert not partial_path(entry, cfg.model_dir).exists()
    lock = read_lock(cfg.model_dir)["model.bin"]
    assert lock["sha256"] == sha(data) and lock["checksum_source"] == "publisher"
    assert file_state(entry, cfg.model_dir).state == "verified"
    # a second pull finds it in place and fetches nothing
    before = len(server.requests)
    assert pull(entry, cfg).status == "present"
    assert len(server.requests) == before


def test_a_cut_connection_resumes_with_a_range_request(server: ModelServer, tmp_path: Path) -> None:
    data = blob(2)
    entry = entry_for(server, "cut.bin", data)
    server.files["/files/cut.bin"].cut_after = [300_000]
    result = pull(entry, config(tmp_path))
    assert entry.local_path(tmp_path / "models").read_bytes() == data
    first, second = server.requests_for("/files/cut.bin")
    assert "range" not in first.headers and first.sent == 300_000
    # what reached the disk before the cut (whole network reads) is kept; the rest is asked for
    start = int(second.headers["range"].removeprefix("bytes=").rstrip("-"))
    assert 300_000 - NET_CHUNK < start <= 300_000 and start == result.resumed_from
    assert second.headers["if-range"] == server.files["/files/cut.bin"].etag
    assert second.sent == SIZE - start, "resumed, not downloaded twice"


def test_a_later_pull_resumes_the_partial_download(server: ModelServer, tmp_path: Path) -> None:
    """The first pull gives up (cut, then the server is down); the part is kept aside, never
    where the model is looked for; the next pull continues from it."""
    data = blob(3)
    entry = entry_for(server, "later.bin", data)
    served = server.files["/files/later.bin"]
    served.cut_after = [250_000]
    served.fail_after_cuts = [503, 503, 503]
    cfg = config(tmp_path)
    with pytest.raises(DownloadFailed, match="HTTP 503"):
        pull(entry, cfg)
    target = entry.local_path(cfg.model_dir)
    assert not target.exists()
    part = partial_path(entry, cfg.model_dir)
    kept = part.stat().st_size
    assert 250_000 - NET_CHUNK < kept <= 250_000 and PARTIAL_DIR in part.parts
    assert file_state(entry, cfg.model_dir).state == "partial"
    pull(entry, cfg)
    assert target.read_bytes() == data
    assert server.requests_for("/files/later.bin")[-1].headers["range"] == f"bytes={kept}-"


@pytest.mark.parametrize("seed", range(6))
def test_resuming_at_any_cut_gives_the_exact_bytes(
    server: ModelServer, tmp_path: Path, seed: int
) -> None:
    """Cuts at random places (several per download, at chunk edges, after one byte...)."""
    rng = random.Random(seed)
    data = blob(100 + seed, rng.randrange(1, 3 * SIZE))
    entry = entry_for(server, f"r{seed}.bin", data)
    cuts = sorted(rng.sample([0, 1, 65_536, 1_048_575, *rng.sample(range(len(data)), 3)], 3))
    server.files[f"/files/r{seed}.bin"].cut_after = [c for c in cuts if c < len(data)]
    pull(entry, config(tmp_path, retries=5))
    assert entry.local_path(tmp_path / "models").read_bytes() == data


def test_a_server_that_ignores_range_restarts_cleanly(server: ModelServer, tmp_path: Path) -> None:
    data = blob(4)
    entry = entry_for(server, "norange.bin", data)
    served = server.files["/files/norange.bin"]
    served.cut_after = [200_000]
    served.ranges = False
    pull(entry, config(tmp_path))
    assert entry.local_path(tmp_path / "models").read_bytes() == data


def test_checksum_mismatch_leaves_nothing_in_place(
    server: ModelServer, tmp_path: Path, cli: Any
) -> None:
    good, bad = blob(5), blob(6)
    entry = entry_for(server, "tampered.bin", good)
    server.files["/files/tampered.bin"].body = bad  # same size, other bytes
    manifest = write_manifest(tmp_path / "mine.json", [entry])
    code, output = cli("models", "pull", "tampered.bin", SINGTOME_MODEL_MANIFEST=str(manifest))
    assert code != 0
    assert "sha256" in output and "nothing was installed" in output
    models = tmp_path / "models"
    assert not entry.local_path(models).exists()
    assert not partial_path(entry, models).exists()
    assert "tampered.bin" not in read_lock(models)


def test_more_bytes_than_the_manifest_size_are_refused(server: ModelServer, tmp_path: Path) -> None:
    data = blob(7)
    entry = entry_for(server, "big.bin", data, checksum=False, size=SIZE - 10)
    with pytest.raises(ChecksumMismatch, match="offers 700000 bytes; expected 699990"):
        pull(entry, config(tmp_path))
    server.files["/files/big.bin"].length = False  # no Content-Length: caught while reading
    with pytest.raises(ChecksumMismatch, match="more than the manifest's 699990 bytes"):
        pull(entry, config(tmp_path))
    assert not entry.local_path(tmp_path / "models").exists()
    assert not partial_path(entry, tmp_path / "models").exists()


def test_404_names_the_file_and_where_to_put_it(
    server: ModelServer, tmp_path: Path, cli: Any
) -> None:
    entry = entry_for(server, "gone.bin", blob(8))
    del server.files["/files/gone.bin"]
    manifest = write_manifest(tmp_path / "mine.json", [entry])
    code, output = cli("models", "pull", "gone.bin", SINGTOME_MODEL_MANIFEST=str(manifest))
    assert code == 1
    text = " ".join(output.split())
    assert "gone.bin" in text and "HTTP 404" in text
    assert f"Put the file there by hand: {entry.local_path(tmp_path / 'models')}" in text
    assert not entry.local_path(tmp_path / "models").exists()


def test_refused_connection_fails_fast_with_a_hand_placement_hint(tmp_path: Path) -> None:
    entry = ModelEntry(
        name="offline.bin", kind="other", url="http://127.0.0.1:9/x/offline.bin", licence="t"
    )
    started = time.monotonic()
    with pytest.raises(DownloadFailed) as failure:
        pull(entry, config(tmp_path, retries=3, backoff_s=1.0))
    assert time.monotonic() - started < 3, "offline is said at once, not after retries"
    message = str(failure.value)
    assert "connection refused" in message
    assert str(entry.local_path(tmp_path / "models")) in message


def test_a_stalled_server_times_out(server: ModelServer, tmp_path: Path) -> None:
    entry = entry_for(server, "stall.bin", blob(9))
    server.files["/files/stall.bin"].stall_s = 5.0
    started = time.monotonic()
    with pytest.raises(DownloadFailed, match=r"sent nothing for 0\.5 s"):
        pull(entry, config(tmp_path, read_timeout_s=0.5, retries=0))
    assert time.monotonic() - started < 4
    assert not entry.local_path(tmp_path / "models").exists()


def test_two_pulls_at_once_download_once(server: ModelServer, tmp_path: Path) -> None:
    data = blob(10)
    entry = entry_for(server, "shared.bin", data)
    cfg = config(tmp_path)
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(pull(entry, cfg).status)) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["downloaded", "present"]
    assert sum(r.sent for r in server.requests_for("/files/shared.bin")) == SIZE
    assert entry.local_path(cfg.model_dir).read_bytes() == data


# --------------------------------------------------------------------------------------------------
# files without a publisher checksum: pinned on first download
# --------------------------------------------------------------------------------------------------


def test_unchecksummed_file_is_pinned_on_first_download(
    server: ModelServer, tmp_path: Path
) -> None:
    first = blob(11)
    entry = entry_for(server, "community.pth", first, checksum=False, size=None)
    cfg = config(tmp_path)
    assert pull(entry, cfg).pinned
    pin = read_lock(cfg.model_dir)["community.pth"]
    assert pin["sha256"] == sha(first) and pin["size"] == SIZE and pin["pinned"]
    state = file_state(entry, cfg.model_dir)
    assert state.state == "verified" and state.pinned and state.sha256 == sha(first)
    # the publisher replaces the file: a fresh download of the entry must match the pin
    entry.local_path(cfg.model_dir).unlink()
    server.files["/files/community.pth"].body = blob(12)
    with pytest.raises(ChecksumMismatch, match="pinned on first download"):
        pull(entry, cfg)
    assert not entry.local_path(cfg.model_dir).exists()


# --------------------------------------------------------------------------------------------------
# verify and list
# --------------------------------------------------------------------------------------------------


def test_verify_catches_a_changed_file(server: ModelServer, tmp_path: Path, cli: Any) -> None:
    data = blob(13)
    entry = entry_for(server, "checked.bin", data)
    manifest = write_manifest(tmp_path / "mine.json", [entry])
    env = {"SINGTOME_MODEL_MANIFEST": str(manifest)}
    assert cli("models", "pull", "checked.bin", **env)[0] == 0
    assert cli("models", "verify", "checked.bin", **env)[0] == 0
    target = entry.local_path(tmp_path / "models")
    damaged = bytearray(data)
    damaged[SIZE // 2] ^= 0xFF
    target.write_bytes(bytes(damaged))
    assert file_state(entry, tmp_path / "models").state == "present"  # changed since last hash
    code, output = cli("models", "verify", **env)
    assert code == 1 and "mismatch" in output and "checked.bin" in output
    assert verify(entry, tmp_path / "models").state == "mismatch"
    target.write_bytes(data[:-1])  # a truncated file is spotted without hashing
    assert file_state(entry, tmp_path / "models").state == "mismatch"


def test_list_json_merges_the_user_manifest(server: ModelServer, tmp_path: Path, cli: Any) -> None:
    mine = entry_for(server, "my-encoder.pt", blob(14), kind="content-encoder")
    override = entry_for(server, "rmvpe.pt", blob(15), kind="pitch", path="rvc/rmvpe.pt")
    manifest = write_manifest(tmp_path / "mine.json", [mine, override])
    env = {"SINGTOME_MODEL_MANIFEST": str(manifest)}
    assert cli("models", "pull", "my-encoder.pt", **env)[0] == 0
    code, output = cli("models", "list", "--json", **env)
    assert code == 0
    rows = {row["name"]: row for row in json.loads(output)}
    models = tmp_path / "models"
    assert rows["my-encoder.pt"]["origin"] == "user"
    assert rows["my-encoder.pt"]["state"] == "verified"
    assert rows["my-encoder.pt"]["path"] == str(models / "rvc" / "my-encoder.pt")
    assert rows["rmvpe.pt"]["origin"] == "user" and rows["rmvpe.pt"]["url"] == override.url
    assert rows["rmvpe.pt"]["state"] == "absent"
    assert rows["hubert_base.pt"]["origin"] == "builtin"
    assert rows["hubert_base.pt"]["path"] == str(models / "rvc" / "hubert_base.pt")
    assert rows["UVR-MDX-NET-Inst_HQ_3.onnx"]["origin"] == "audio-separator"
    assert all(
        {"path", "state", "sha256", "size", "licence", "kind"} <= set(r) for r in rows.values()
    )


def test_a_broken_user_manifest_is_a_clear_error(tmp_path: Path, cli: Any) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "x", "kind": "other", "url": "ftp://x/y", "licence": "l"}]))
    code, output = cli("models", "list", SINGTOME_MODEL_MANIFEST=str(bad))
    assert code == 1 and "url must be http(s)" in output and str(bad) in output
    with pytest.raises(ManifestError, match="JSON list"):
        parse_entries('{"name": "x"}', "user", "mine.json")
    with pytest.raises(ManifestError, match="plain name"):
        parse_entries(
            '[{"name": "../x", "kind": "other", "url": "http://h/x", "licence": "l"}]', "user", "m"
        )
    with pytest.raises(ManifestError, match="relative"):
        parse_entries(
            '[{"name": "x", "kind": "other", "url": "http://h/x", "licence": "l", '
            '"path": "../../etc/x"}]',
            "user",
            "m",
        )


def test_models_path_prints_where_the_file_goes(cli: Any, tmp_path: Path) -> None:
    code, output = cli("models", "path", "f0G40k.pth")
    assert code == 1  # not pulled
    assert str(tmp_path / "models" / "rvc" / "pretrained_v2" / "f0G40k.pth") in output
    assert cli("models", "pull", "no-such-model")[0] == 1


# --------------------------------------------------------------------------------------------------
# mirrors
# --------------------------------------------------------------------------------------------------


def test_mirror_serves_the_same_paths(server: ModelServer, tmp_path: Path) -> None:
    data = blob(16)
    server.add("/org/repo/resolve/main/weights.bin", data)
    entry = ModelEntry(
        name="weights.bin",
        kind="other",
        url="https://models.invalid/org/repo/resolve/main/weights.bin",  # never contacted
        size=len(data),
        sha256=sha(data),
        licence="t",
    )
    result = pull(entry, config(tmp_path, mirror=server.url + "/"))
    assert result.url == server.url + "/org/repo/resolve/main/weights.bin"
    assert entry.local_path(tmp_path / "models").read_bytes() == data
    assert read_lock(tmp_path / "models")["weights.bin"]["url"] == entry.url


def test_hf_endpoint_is_used_for_hugging_face_files_and_the_real_checksum_holds(
    server: ModelServer, tmp_path: Path, cli: Any
) -> None:
    """HF_ENDPOINT moves the built-in hubert_base.pt to a private hub; the bytes it serves here
    are not the real model, so the publisher's sha256 refuses them."""
    path = "/lj1995/VoiceConversionWebUI/resolve/main/hubert_base.pt"
    server.add(path, blob(17, 1000))
    code, output = cli(
        "models",
        "pull",
        "hubert_base.pt",
        SINGTOME_MODEL_MIRROR=None,
        HF_ENDPOINT=server.url,
    )
    assert code == 1
    assert server.requests_for(path), "fetched from HF_ENDPOINT"
    assert "189507909" in output and "nothing was installed" in " ".join(output.split())
    assert not (tmp_path / "models" / "rvc" / "hubert_base.pt").exists()


def test_the_mirror_wins_over_hf_endpoint() -> None:
    entry = ModelEntry(
        name="a",
        kind="other",
        url="https://huggingface.co/o/r/resolve/main/a?download=1",
        licence="l",
    )
    assert (
        source_url(entry, "http://m:1/", "http://hf") == "http://m:1/o/r/resolve/main/a?download=1"
    )
    assert source_url(entry, None, "http://hf/") == "http://hf/o/r/resolve/main/a?download=1"
    other = ModelEntry(name="b", kind="other", url="https://github.com/x/y/b", licence="l")
    assert source_url(other, None, "http://hf") == other.url


# --------------------------------------------------------------------------------------------------
# the manifest itself
# --------------------------------------------------------------------------------------------------


def test_builtin_manifest_covers_the_rvc_files_with_publisher_checksums() -> None:
    manifest = load_manifest(None)
    for name in ("hubert_base.pt", "contentvec", "rmvpe.pt"):
        entry = manifest.get(name)
        assert entry is not None and entry.sha256 and entry.size and entry.licence
    for rate in ("32k", "40k", "48k"):
        for net in ("G", "D"):
            entry = manifest.get(f"f0{net}{rate}.pth")
            assert entry is not None and entry.sha256, entry
            assert entry.url.endswith(f"/pretrained_v2/f0{net}{rate}.pth")
            assert entry.relative_path == f"rvc/pretrained_v2/f0{net}{rate}.pth"


def test_an_entry_names_its_setting_by_path_and_a_bare_field_still_works() -> None:
    from streams.settings import PULLED_DEFAULTS

    builtin = {e.setting for e in load_manifest(None, separation=False) if e.setting}
    assert builtin == set(PULLED_DEFAULTS)
    common = {"kind": "other", "url": "https://example.org/x.pt", "licence": "test"}
    for written in ("hubert_path", "models.hubert_path"):
        entry = ModelEntry(name="x.pt", setting=written, **common)  # type: ignore[arg-type]
        assert entry.setting == "models.hubert_path"


def test_separation_models_come_from_audio_separators_own_lists() -> None:
    import importlib.util

    entries = {e.name: e for e in separation_entries()}
    resources = Path(
        next(iter(importlib.util.find_spec("UVR_resources").submodule_search_locations))
    )  # type: ignore[union-attr]
    links = json.loads((resources / "model_list_links.json").read_text())
    listed = {
        name: url
        for groups in links.values()
        if isinstance(groups, dict)
        for files in groups.values()
        for name, url in files.items()
    }
    assert set(listed) <= set(entries)
    assert all(entries[name].url == url for name, url in listed.items())
    assert entries["htdemucs_ft.yaml"].requires == [
        "f7e0c4bc-ba3fe64a.th",
        "d12395a8-e57c48e6.th",
        "92cfc3b6-ef3bcb9c.th",
        "04573f0d-f3cf25b2.th",
    ]
    own = entries["mel_band_roformer_karaoke_becruily.ckpt"]  # only in audio-separator's list
    assert own.url == f"{AUDIO_SEPARATOR_RELEASES}/mel_band_roformer_karaoke_becruily.ckpt"
    assert own.requires and own.requires[0].endswith(".yaml") and own.requires[0] in entries
    assert all(e.local_path(Path("/m")).parent == Path("/m/uvr") for e in entries.values())


def test_select_takes_globs_and_requirements(tmp_path: Path) -> None:
    manifest = load_manifest(None)
    names = [e.name for e in manifest.select(["f0?40k.pth"])]
    assert names == ["f0G40k.pth", "f0D40k.pth"]
    assert len(manifest.select(["htdemucs_ft.yaml"])) == 5
    with pytest.raises(KeyError):
        manifest.select(["nothing-like-this*"])


# --------------------------------------------------------------------------------------------------
# pulled models are found without any variable
# --------------------------------------------------------------------------------------------------


def test_settings_default_to_the_pulled_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agents.trainer.stage import voice_kind

    models = tmp_path / "models"
    for name in ("SINGTOME_HUBERT_PATH", "SINGTOME_RMVPE_PATH", "SINGTOME_PRETRAINED_DIR"):
        monkeypatch.delenv(name, raising=False)
    bare = Settings(models={"dir": models}).models
    assert bare.hubert_path is None and bare.rmvpe_path is None and bare.pretrained_dir is None
    assert voice_kind(bare) == "world"
    # a half download sits aside and is never taken for the model
    part = models / PARTIAL_DIR / "rvc" / "hubert_base.pt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"half")
    assert Settings(models={"dir": models}).models.hubert_path is None
    (models / "rvc" / "pretrained_v2").mkdir(parents=True)
    (models / "rvc" / "contentvec").mkdir()
    (models / "rvc" / "contentvec" / "pytorch_model.bin").write_bytes(b"cv")
    encoder = Settings(models={"dir": models}).models.hubert_path
    assert encoder == models / "rvc/contentvec/pytorch_model.bin"
    for name in ("hubert_base.pt", "rmvpe.pt", "pretrained_v2/f0G40k.pth"):
        (models / "rvc" / name).write_bytes(b"x")
    found = Settings(models={"dir": models}).models
    assert found.hubert_path == models / "rvc" / "hubert_base.pt"  # RVC's own encoder first
    assert found.rmvpe_path == models / "rvc" / "rmvpe.pt"
    assert found.pretrained_dir == models / "rvc" / "pretrained_v2"
    assert voice_kind(found) == "rvc"
    monkeypatch.setenv("SINGTOME_HUBERT_PATH", str(tmp_path / "mine.pt"))
    chosen = Settings(models={"dir": models}).models.hubert_path
    assert chosen == tmp_path / "mine.pt"  # a variable wins
    assert os.environ["SINGTOME_MODEL_MIRROR"].startswith("http://127.0.0.1")
