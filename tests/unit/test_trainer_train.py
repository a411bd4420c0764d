"""RVC training loop on a tiny model over a synthetic experiment directory."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from agents.trainer.data import VoiceDataset, collate
from agents.trainer.losses import discriminator_loss, generator_loss, kl_loss
from agents.trainer.train import TrainConfig, build_trainer, train_model
from agents.voice.checkpoint import load_voice_model, training_checkpoints
from agents.voice.configs import get_config
from foundation.errors import StageError

SR = 40000
HOP = 400  # 40k: 100 spectrogram frames per second


def _coarse(f0: np.ndarray) -> np.ndarray:
    """RVC's mel-scale pitch quantisation to 1..255 (written here so the test stands alone)."""
    mel = 1127 * np.log1p(f0 / 700)
    lo, hi = 1127 * np.log1p(50 / 700), 1127 * np.log1p(1100 / 700)
    return np.clip(np.rint((mel - lo) * 254 / (hi - lo) + 1), 1, 255).astype(np.int64)


def make_exp_dir(root: Path, clips: int = 4, frames: int = 60, version: str = "v2") -> Path:
    """What preprocess + features write: gt wavs, coarse/Hz pitch at 100 Hz, features at 50 Hz."""
    rng = np.random.default_rng(0)
    feature_dir = f"3_feature{768 if version == 'v2' else 256}"
    for name in ("0_gt_wavs", "2a_f0", "2b-f0nsf", feature_dir):
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(clips):
        f0 = 140 + 40 * np.sin(np.linspace(0, 3, frames)) + 15 * i
        phase = 2 * np.pi * np.cumsum(np.repeat(f0, HOP)) / SR
        wave = (
            0.3 * np.sin(phase) + 0.1 * np.sin(2 * phase) + 0.01 * rng.standard_normal(phase.size)
        )
        # an odd tail of samples, as real clips have
        wave = np.concatenate([wave, np.zeros(123)]).astype(np.float32)
        sf.write(root / "0_gt_wavs" / f"0_{i}.wav", wave, SR, subtype="FLOAT")
        np.save(root / "2a_f0" / f"0_{i}.wav.npy", _coarse(f0))
        np.save(root / "2b-f0nsf" / f"0_{i}.wav.npy", f0.astype(np.float32))
        width = 768 if version == "v2" else 256
        # content features at 50 Hz: half the frames (plus one, as HuBERT often gives)
        features = rng.standard_normal((frames // 2 + 1, width)).astype(np.float32)
        np.save(root / feature_dir / f"0_{i}.npy", features)
    return root


def test_dataset_aligns_features_pitch_and_audio(tmp_path: Path) -> None:
    exp = make_exp_dir(tmp_path, clips=2, frames=60)
    config = get_config("v2", "40k", "tiny")
    data = VoiceDataset(exp, config.audio, "v2", True, segment_frames=8, max_frames=40, seed=0)
    assert len(data) == 2
    example = data[0]
    frames = example.spec.shape[1]
    assert frames == 40  # cropped to max_frames
    assert example.phone.shape == (40, 768)
    assert example.pitch is not None and example.pitchf is not None
    assert example.pitch.shape == example.pitchf.shape == (40,)
    assert example.wave.shape == (1, 40 * HOP)
    # features are repeated twice (50 Hz → 100 Hz): consecutive frame pairs are equal
    raw = np.load(exp / "3_feature768" / "0_0.npy")
    full = VoiceDataset(exp, config.audio, "v2", True, segment_frames=8, max_frames=900)[0]
    assert full.spec.shape[1] == 60  # min of 60 pitch frames, 62 feature frames, 60 audio frames
    np.testing.assert_array_equal(full.phone[0::2].numpy(), raw[:30])
    np.testing.assert_array_equal(full.phone[1::2].numpy(), raw[:30])

    batch = collate([data[0], full], hop_length=HOP, min_frames=8)
    assert batch.phone.shape == (2, 60, 768)
    assert batch.spec_lengths.tolist() == [40, 60]
    assert batch.wave.shape == (2, 1, 60 * HOP)
    assert batch.pitch is not None and batch.pitch.dtype == torch.long


def test_missing_or_short_data_is_a_clear_error(tmp_path: Path) -> None:
    config = get_config("v2", "40k", "tiny")
    with pytest.raises(StageError) as err:
        VoiceDataset(tmp_path, config.audio, "v2", True, segment_frames=8)
    assert err.value.code == "dataset_empty"
    exp = make_exp_dir(tmp_path / "short", clips=1, frames=6)
    with pytest.raises(StageError) as err:
        VoiceDataset(exp, config.audio, "v2", True, segment_frames=8)
    assert err.value.code == "dataset_too_short"


def test_losses_reward_the_right_side() -> None:
    real, fake = [torch.ones(2, 5)], [torch.zeros(2, 5)]
    perfect, _, _ = discriminator_loss(real, fake)
    fooled, _, _ = discriminator_loss(fake, real)
    assert perfect.item() == 0.0 and fooled.item() == 2.0
    assert generator_loss([torch.ones(3)])[0].item() == 0.0
    m = torch.zeros(1, 4, 6)
    mask = torch.ones(1, 1, 6)
    # identical distributions at the mean: KL estimate is 0; a wider posterior scores lower
    assert kl_loss(m, m, m, m, mask).item() == pytest.approx(-0.5 * 4)
    assert kl_loss(m, m + 0.5, m, m, mask).item() < kl_loss(m, m, m, m, mask).item()


def test_the_generator_step_gives_the_discriminator_no_gradient(tmp_path: Path) -> None:
    """The discriminator's gradients after a step are those of its own loss: the generator's
    backward pass goes through it to the generated audio and adds nothing to its weights (what it
    would add is discarded anyway), and its weights still take gradients afterwards."""
    config = get_config("v2", "40k", "tiny")
    trainer = build_trainer(
        config, TrainConfig(version="v2", model_size="tiny"), torch.device("cpu")
    )
    segment = config.synthesizer.segment_frames
    dataset = VoiceDataset(make_exp_dir(tmp_path), config.audio, "v2", True, segment)
    batch = collate([dataset[0], dataset[1]], hop_length=HOP, min_frames=segment)
    at_update: dict[str, torch.Tensor] = {}
    step_d = trainer.optim_d.step

    def snapshot_then_step(*args: object, **kwargs: object) -> object:
        for name, parameter in trainer.net_d.named_parameters():
            assert parameter.grad is not None, name
            at_update[name] = parameter.grad.clone()
        return step_d(*args, **kwargs)

    trainer.optim_d.step = snapshot_then_step  # type: ignore[method-assign]
    for _ in range(2):
        trainer.step(batch)
        for name, parameter in trainer.net_d.named_parameters():
            assert parameter.requires_grad, name
            assert parameter.grad is not None and torch.equal(parameter.grad, at_update[name]), name
    assert all(p.grad is not None for p in trainer.net_g.parameters() if p.requires_grad)


def test_training_lowers_mel_loss_and_exports_a_model(tmp_path: Path) -> None:
    torch.set_num_threads(1)  # keep the shared CI cores free
    exp = make_exp_dir(tmp_path)
    progress: list[tuple[float, str]] = []
    result = train_model(
        exp,
        TrainConfig(
            sample_rate="40k",
            version="v2",
            f0=True,
            epochs=8,
            batch_size=2,
            save_every=4,
            seed=0,
            device="cpu",
            model_size="tiny",
            learning_rate=2e-3,  # so a few steps show learning
        ),
        lambda fraction, message: progress.append((fraction, message)),
    )
    losses = result.step_mel_losses
    assert len(losses) == 16 and result.global_step == 16
    assert all(math.isfinite(x) for x in losses)
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < first * 0.8, (first, last)
    assert [round(f, 3) for f, _ in progress] == [round((e + 1) / 8, 3) for e in range(8)]
    assert "epoch 8/8" in progress[-1][1]
    assert math.isfinite(result.metrics["loss_mel"]) and math.isfinite(result.metrics["loss_kl"])
    # the learning rate decays once per epoch
    assert result.history[1].learning_rate == pytest.approx(2e-3 * 0.999875)

    voice = load_voice_model(result.model_path)
    assert (voice.sr, voice.f0, voice.version) == (40000, True, "v2")
    frames = 30
    audio = voice.synthesizer.infer(
        torch.randn(1, frames, 768),
        torch.tensor([frames]),
        torch.full((1, frames), 60, dtype=torch.long),
        torch.full((1, frames), 180.0),
        torch.tensor([0]),
    )
    assert audio.shape == (1, 1, frames * HOP) and torch.isfinite(audio).all()


def test_resume_continues_the_epoch_and_step_count(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    exp = make_exp_dir(tmp_path, clips=2, frames=30, version="v1")
    config = TrainConfig(
        sample_rate="40k",
        version="v1",
        f0=False,
        epochs=2,
        batch_size=2,
        save_every=1,
        keep_checkpoints=1,
        device="cpu",
        model_size="tiny",
        seed=3,
    )
    first = train_model(exp, config)
    assert (first.final_epoch, first.global_step, first.resumed_from_epoch) == (2, 2, 0)
    assert [p.name for p in training_checkpoints(exp, "G")] == ["G_2.pth"]  # older one pruned
    assert [p.name for p in training_checkpoints(exp, "D")] == ["D_2.pth"]

    config.epochs = 4
    second = train_model(exp, config)
    assert second.resumed_from_epoch == 2
    assert [m.epoch for m in second.history] == [3, 4]
    assert second.global_step == 4 and second.final_epoch == 4
    # the learning rate carries on decaying from where the first run stopped
    assert second.history[0].learning_rate == pytest.approx(1e-4 * 0.999875**2)
    assert [p.name for p in training_checkpoints(exp, "G")] == ["G_4.pth"]
    voice = load_voice_model(second.model_path)
    assert (voice.f0, voice.version) == (False, "v1")
    assert torch.load(second.model_path, weights_only=True)["info"] == "4epoch"
