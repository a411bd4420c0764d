"""How the trainer batches and computes: the length-bucket sampler and the precision per device."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.trainer.data import BUCKET_BOUNDARIES, BucketBatchSampler, VoiceDataset, collate
from agents.trainer.train import (
    BF16,
    FP16,
    FP32,
    TrainConfig,
    build_trainer,
    resolve_precision,
    train_model,
)
from agents.voice.configs import get_config
from foundation.device import DeviceUnavailable
from tests.unit.test_trainer_train import make_exp_dir

lengths_st = st.lists(st.integers(1, 1200), min_size=1, max_size=120)
boundaries_st = st.lists(st.integers(1, 1000), min_size=0, max_size=8, unique=True)


def _interval(length: int, boundaries: list[int]) -> int:
    """Which of (-inf, b0], (b0, b1], …, (b_last, inf) holds ``length`` (a plain scan)."""
    edges = sorted(boundaries)
    return next((i for i, edge in enumerate(edges) if length <= edge), len(edges))


def _padding(batches: list[list[int]], lengths: list[int]) -> int:
    """Frames of zeros collate adds: every example padded to its batch's longest."""
    return sum(max(lengths[i] for i in b) - lengths[i] for b in batches for i in b)


def _assert_neighbours_in_length(batches: list[list[int]], lengths: list[int]) -> None:
    """The batches cover disjoint length ranges, so together they pad at most (size-1) x range."""
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in itertools.pairwise(spans))
    size = max((len(b) for b in batches), default=1)
    assert _padding(batches, lengths) <= (size - 1) * (max(lengths) - min(lengths))


def _skewed_lengths(count: int, seed: int) -> list[int]:
    """RVC-like clips: most near the slicer's 3.7 s, a long tail of short and long ones."""
    rng = np.random.default_rng(seed)
    common = rng.integers(330, 371, count)
    tail = rng.integers(40, 900, count)
    return [int(t) if rng.random() < 0.35 else int(c) for c, t in zip(common, tail, strict=True)]


@settings(max_examples=60, deadline=None)
@given(lengths_st, st.integers(1, 9), boundaries_st, st.integers(0, 2**32), st.integers(0, 50))
def test_every_example_once_per_epoch_and_batches_stay_in_one_bucket(
    lengths: list[int], batch_size: int, boundaries: list[int], seed: int, epoch: int
) -> None:
    sampler = BucketBatchSampler(lengths, batch_size, boundaries, seed=seed)
    sampler.set_epoch(epoch)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert len(batches) == len(sampler)
    assert all(1 <= len(b) <= batch_size for b in batches)
    # as many steps as random batching: the short ends of the buckets are pooled
    assert len(batches) == math.ceil(len(lengths) / batch_size)
    sizes: dict[int, int] = {}
    for length in lengths:
        sizes[_interval(length, boundaries)] = sizes.get(_interval(length, boundaries), 0) + 1
    mixed = [b for b in batches if len({_interval(lengths[i], boundaries) for i in b}) > 1]
    pooled = sum(n % batch_size for n in sizes.values())
    assert len(mixed) <= math.ceil(pooled / batch_size)
    _assert_neighbours_in_length(mixed, lengths)


@settings(max_examples=30, deadline=None)
@given(lengths_st, st.integers(1, 6), st.integers(0, 2**32), st.integers(0, 50))
def test_the_order_is_a_function_of_seed_and_epoch(
    lengths: list[int], batch_size: int, seed: int, epoch: int
) -> None:
    def order(seed: int, epoch: int) -> list[list[int]]:
        sampler = BucketBatchSampler(lengths, batch_size, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(seed, epoch) == order(seed, epoch)
    reused = BucketBatchSampler(lengths, batch_size, seed=seed)
    reused.set_epoch(epoch + 1)
    list(reused)
    reused.set_epoch(epoch)  # a resumed run: earlier epochs leave no trace
    assert list(reused) == order(seed, epoch)


def test_epochs_and_seeds_reorder_the_batches_and_mix_the_buckets() -> None:
    lengths = _skewed_lengths(200, seed=1)
    orders = []
    for seed, epoch in ((0, 1), (0, 2), (0, 3), (1, 1)):
        sampler = BucketBatchSampler(lengths, 4, seed=seed)
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert all(a != b for i, a in enumerate(orders) for b in orders[i + 1 :])
    # the batches of all buckets are shuffled together, not served bucket after bucket
    for batches in orders:
        buckets = [_interval(lengths[b[0]], list(BUCKET_BOUNDARIES)) for b in batches]
        assert buckets != sorted(buckets) and buckets != sorted(buckets, reverse=True)
        # and within a bucket the members change from epoch to epoch
    assert {tuple(sorted(b)) for b in orders[0]} != {tuple(sorted(b)) for b in orders[1]}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bucketing_pads_far_less_than_random_batches(seed: int) -> None:
    lengths = _skewed_lengths(240, seed=seed)
    batch_size = 4
    sampler = BucketBatchSampler(lengths, batch_size, seed=seed)
    bucketed = _padding(list(sampler), lengths)
    # RVC's edges make buckets 100 frames wide ((800, 900] is the last one here): a full batch
    # pads each clip by less than that, the pooled short ends at most one batch of the range
    assert bucketed < 100 * len(lengths) + batch_size * (max(lengths) - min(lengths))
    assert len(sampler) == len(lengths) // batch_size
    edges = list(BUCKET_BOUNDARIES)
    mixed = [b for b in sampler if len({_interval(lengths[i], edges) for i in b}) > 1]
    assert mixed
    _assert_neighbours_in_length(mixed, lengths)
    perm = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [perm[i : i + batch_size] for i in range(0, len(perm), batch_size)]
    assert bucketed < 0.25 * _padding(shuffled, lengths), (bucketed, _padding(shuffled, lengths))


def _mixed_exp_dir(root: Path, frames: tuple[int, ...]) -> Path:
    """An experiment directory with one clip of each length in ``frames`` (clip i is "i_0")."""
    exp = root / "exp"
    for i, count in enumerate(frames):
        part = make_exp_dir(root / f"part{i}", clips=1, frames=count)
        for folder in part.iterdir():
            (exp / folder.name).mkdir(parents=True, exist_ok=True)
            for f in folder.iterdir():
                f.rename(exp / folder.name / f.name.replace("0_0", f"{i}_0"))
    return exp


def test_the_dataset_reports_each_examples_frames(tmp_path: Path) -> None:
    config = get_config("v2", "40k", "tiny")
    exp = _mixed_exp_dir(tmp_path, (30, 52, 75))
    data = VoiceDataset(exp, config.audio, "v2", True, segment_frames=8, max_frames=60)
    assert data.lengths == [30, 52, 60]  # the last one cropped to max_frames
    assert [data[i].spec.shape[1] for i in range(3)] == data.lengths


def test_training_on_clips_of_mixed_lengths_uses_bucketed_batches(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    exp = _mixed_exp_dir(tmp_path, (30, 34, 150, 160, 40))
    result = train_model(
        exp,
        TrainConfig(epochs=2, batch_size=2, save_every=2, seed=0, device="cpu", model_size="tiny"),
    )
    # buckets (-inf, 100]: 3 clips, (100, 200]: 2 clips -> a batch each and one pooled batch
    assert [m.steps for m in result.history] == [3, 3]
    assert result.global_step == 6 and all(math.isfinite(x) for x in result.step_mel_losses)


CPU, GPU = torch.device("cpu"), torch.device("cuda:1")


def test_precision_on_the_cpu_is_fp32_unless_bf16_is_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_gpu_here(*args: object) -> object:
        raise AssertionError("a CPU device must not ask CUDA anything")

    monkeypatch.setattr(torch.cuda, "get_device_capability", no_gpu_here)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", no_gpu_here)
    assert resolve_precision("auto", CPU) == FP32
    assert resolve_precision("fp32", CPU) == FP32
    assert resolve_precision("bf16", CPU) == BF16
    with pytest.raises(DeviceUnavailable, match="fp16 training needs a CUDA GPU"):
        resolve_precision("fp16", CPU)


def test_precision_on_a_gpu_follows_its_bf16_support(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_precision("auto", GPU, cuda_bf16=True) == BF16
    assert resolve_precision("auto", GPU, cuda_bf16=False) == FP16
    assert resolve_precision("fp16", GPU, cuda_bf16=True) == FP16
    assert resolve_precision("fp32", GPU, cuda_bf16=True) == FP32
    assert resolve_precision("bf16", GPU, cuda_bf16=True) == BF16
    with pytest.raises(DeviceUnavailable, match="no bf16 support"):
        resolve_precision("bf16", GPU, cuda_bf16=False)
    assert FP16.scaler and not BF16.scaler and not FP32.scaler and FP32.dtype is None

    asked: list[object] = []
    for major, expected in ((8, BF16), (9, BF16), (7, FP16)):
        monkeypatch.setattr(
            torch.cuda,
            "get_device_capability",
            lambda device, major=major: asked.append(device) or (major, 0),
        )
        assert resolve_precision("auto", GPU) == expected
    assert asked == [GPU, GPU, GPU]  # the GPU it was given, not the current one


@pytest.mark.parametrize(("choice", "expected"), [("auto", FP32), ("bf16", BF16)])
def test_a_cpu_trainer_steps_in_the_resolved_precision(
    tmp_path: Path, choice: str, expected: object
) -> None:
    torch.set_num_threads(1)
    config = get_config("v2", "40k", "tiny")
    torch.manual_seed(0)
    trainer = build_trainer(
        config,
        TrainConfig(model_size="tiny", precision=choice),
        CPU,  # type: ignore[arg-type]
    )
    assert trainer.precision == expected
    assert trainer.use_amp == (expected is BF16) and not trainer.scaler.is_enabled()
    exp = make_exp_dir(tmp_path, clips=2, frames=60)
    data = VoiceDataset(
        exp, config.audio, "v2", True, segment_frames=config.synthesizer.segment_frames
    )
    batch = collate([data[0], data[1]], config.audio.hop_length, config.synthesizer.segment_frames)
    losses = trainer.step(batch)
    assert all(math.isfinite(v) for v in losses.values())
    params = [*trainer.net_g.parameters(), *trainer.net_d.parameters()]
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in params)
