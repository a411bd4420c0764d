"""The output helper (streams/outputs.py): digest → exists? → compute → upload → manifest last,
with the single-flight lock, against a LocalStore."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from streams import keys, outputs
from streams.outputs import OutputFile, OutputParams, Produced, plan_output, produce, stored_info
from streams.settings import Settings
from streams.stage import StageContext
from streams.store import LocalStore, get_json


class EchoParams(OutputParams):
    level: int
    label: str = "x"


FILES = {"a": OutputFile("a.txt", "text/plain"), "b": OutputFile("b.bin")}


def _plan(level: int = 1, version: str = "1", inputs: tuple[str, ...] = ("h1",)) -> outputs.Output:
    return plan_output(keys.STEMS, list(inputs), EchoParams(level=level), version, FILES)


def _ctx(
    store: LocalStore, tmp_path: Path, force: bool = False, **settings: object
) -> StageContext:
    return StageContext("test", Settings(**settings), store, tmp_path / "work", force=force)  # type: ignore[arg-type]


class Counting:
    """A stage's compute that writes both files and counts its calls."""

    def __init__(self, tmp_path: Path, hold_s: float = 0.0) -> None:
        self.calls = 0
        self.folder = tmp_path / "made"
        self.hold_s = hold_s
        self.lock = threading.Lock()

    def __call__(self) -> Produced:
        with self.lock:
            self.calls += 1
            n = self.calls
        time.sleep(self.hold_s)
        self.folder.mkdir(parents=True, exist_ok=True)
        a, b = self.folder / f"a{n}.txt", self.folder / f"b{n}.bin"
        a.write_text(f"run {n}")
        b.write_bytes(bytes([n]))
        return Produced({"a": a, "b": b}, {"run": n})


def test_the_plan_names_every_key_from_the_layout() -> None:
    plan = _plan()
    assert plan.digest == keys.content_digest(["h1"], {"level": 1, "label": "x"}, "1", keys.STEMS)
    assert plan.keys == {
        "a": keys.output_key(keys.STEMS, plan.digest, "a.txt"),
        "b": keys.output_key(keys.STEMS, plan.digest, "b.bin"),
    }
    assert plan.manifest == keys.manifest_key(keys.STEMS, plan.digest)
    assert plan.lock == keys.output_lock_key(keys.STEMS, plan.digest)
    # Every part of the digest's input counts.
    assert len({_plan().digest, _plan(2).digest, _plan(version="2").digest}) == 3
    assert _plan(inputs=("h2",)).digest != plan.digest
    with pytest.raises(ValueError, match="content-addressed"):
        plan_output("jobs", ["h"], EchoParams(level=1), "1", FILES)
    with pytest.raises(ValueError):  # a parameters model takes no unknown field
        EchoParams(level=1, other=2)  # type: ignore[call-arg]


def test_computes_uploads_then_an_existing_output_is_not_computed(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path / "store")
    compute = Counting(tmp_path)
    first = produce(_ctx(store, tmp_path), _plan(), compute)
    assert not first.cache_hit and first.info == {"run": 1} and compute.calls == 1
    assert store.get_bytes(first.keys["a"]) == b"run 1"
    assert store.get_bytes(first.keys["b"]) == b"\x01"
    manifest = get_json(store, first.output.manifest)
    assert manifest["files"] == first.keys and manifest["info"] == {"run": 1}

    again = produce(_ctx(store, tmp_path), _plan(), compute)
    assert again.cache_hit and again.info == first.info and again.keys == first.keys
    assert compute.calls == 1, "the output exists: nothing computed"

    forced = produce(_ctx(store, tmp_path, force=True), _plan(), compute)
    assert not forced.cache_hit and compute.calls == 2
    # Another code version is another output, computed beside the first.
    bumped = produce(_ctx(store, tmp_path), _plan(version="2"), compute)
    assert not bumped.cache_hit and bumped.keys["a"] != first.keys["a"] and compute.calls == 3


def test_a_crash_between_upload_and_manifest_means_recompute_on_redelivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "store")
    compute = Counting(tmp_path)
    plan = _plan()

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("worker killed")

    with monkeypatch.context() as patch:
        patch.setattr(outputs, "write_manifest", crash)
        with pytest.raises(RuntimeError, match="killed"):
            produce(_ctx(store, tmp_path), plan, compute)
    # Every file is uploaded, but without the manifest the output is not done.
    assert all(store.exists(key) for key in plan.keys.values())
    assert stored_info(store, plan) is None

    again = produce(_ctx(store, tmp_path), plan, compute)
    assert not again.cache_hit and compute.calls == 2
    assert store.get_bytes(again.keys["a"]) == b"run 2"
    assert stored_info(store, plan) == {"run": 2}


def test_a_missing_file_beside_the_manifest_means_recompute(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    compute = Counting(tmp_path)
    first = produce(_ctx(store, tmp_path), _plan(), compute)
    store.delete(first.keys["b"])
    again = produce(_ctx(store, tmp_path), _plan(), compute)
    assert not again.cache_hit and compute.calls == 2 and store.exists(first.keys["b"])


def test_compute_must_make_the_planned_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    one = tmp_path / "one.txt"
    one.write_text("1")
    with pytest.raises(ValueError, match="the plan names"):
        produce(_ctx(store, tmp_path), _plan(), lambda: Produced({"a": one}))
    assert not list(store.list("stems/")), "nothing stored from a wrong compute"


def test_lock_contention_computes_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "store")
    monkeypatch.setattr(outputs, "LOCK_POLL_S", 0.02)
    compute = Counting(tmp_path, hold_s=0.3)
    results: list[outputs.Stored] = []
    waiting: list[str] = []

    def worker(n: int) -> None:
        ctx = _ctx(store, tmp_path / f"w{n}")
        ctx.progress = lambda fraction, message: waiting.append(message)
        results.append(produce(ctx, _plan(), compute, single_flight=True, waiting="queued"))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert compute.calls == 1
    assert len(results) == 4 and sum(not r.cache_hit for r in results) == 1
    assert {r.info["run"] for r in results} == {1}
    assert "queued" in waiting, "the others waited on the lock"
    assert not store.exists(_plan().lock), "the lock is released"


def test_an_abandoned_lock_is_taken_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "store")
    monkeypatch.setattr(outputs, "LOCK_POLL_S", 0.01)
    plan = _plan()
    store.put_bytes(plan.lock, b"a worker that died")
    compute = Counting(tmp_path)
    ctx = _ctx(store, tmp_path, runtime={"stage_timeout_s": 1})
    stored = produce(ctx, plan, compute, single_flight=True)
    assert not stored.cache_hit and compute.calls == 1 and not store.exists(plan.lock)


def test_the_lock_is_released_when_compute_fails(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")

    def fails() -> Produced:
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError):
        produce(_ctx(store, tmp_path), _plan(), fails, single_flight=True)
    assert not store.exists(_plan().lock) and stored_info(store, _plan()) is None
