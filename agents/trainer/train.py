"""Train an RVC voice model on a prepared experiment directory (RVC WebUI's v2 recipe).

Per batch: a discriminator step (LSGAN), then a generator step with
``45 × mel-L1 + 1 × KL + feature matching + adversarial``; AdamW (lr 1e-4, betas 0.8/0.99,
eps 1e-9) for both nets, learning rate × 0.999875 after every epoch. Batches group utterances
of similar length (:class:`~agents.trainer.data.BucketBatchSampler`, as RVC's bucket sampler).
Precision (``TrainConfig.precision``, see :func:`resolve_precision`): by default fp32 on the CPU,
bf16 autocast on a CUDA GPU that supports it, else fp16 autocast with a gradient scaler.
Training checkpoints (``G_<step>.pth``/``D_<step>.pth``) are
written to ``exp_dir`` every ``save_every`` epochs and at the end; a later call with the same
``exp_dir`` resumes from the newest pair. The result is exported as a public-format RVC
inference model.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from agents.trainer.data import Batch, BucketBatchSampler, VoiceDataset, collate
from agents.trainer.losses import discriminator_loss, feature_loss, generator_loss, kl_loss
from agents.voice.checkpoint import (
    Precision,
    PretrainedLoadReport,
    latest_training_checkpoint,
    load_pretrained,
    load_training_checkpoint,
    save_inference_model,
    save_training_checkpoint,
    training_checkpoints,
)
from agents.voice.configs import ModelSize, RVCConfig, SampleRateName, Version, get_config
from agents.voice.discriminator import MultiPeriodDiscriminator
from agents.voice.modules.commons import slice_segments
from agents.voice.modules.spectral import mel_spectrogram, spec_to_mel
from agents.voice.synthesizer import Synthesizer, build_synthesizer
from foundation.device import DeviceUnavailable, resolve_device
from foundation.logging import get_logger
from foundation.progress import ProgressFn

log = get_logger()

TrainPrecision = Literal["auto", "fp32", "fp16", "bf16"]


@dataclass(frozen=True)
class MixedPrecision:
    """How a training step computes: the autocast dtype (None: plain fp32) and loss scaling."""

    name: Literal["fp32", "fp16", "bf16"]
    dtype: torch.dtype | None
    scaler: bool  # fp16's narrow range needs a gradient scaler; bf16 has fp32's range


FP32 = MixedPrecision("fp32", None, scaler=False)
FP16 = MixedPrecision("fp16", torch.float16, scaler=True)
BF16 = MixedPrecision("bf16", torch.bfloat16, scaler=False)


def resolve_precision(
    choice: TrainPrecision, device: torch.device, *, cuda_bf16: bool | None = None
) -> MixedPrecision:
    """The precision ``choice`` means on ``device``.

    ``auto``: fp32 on the CPU; on CUDA bf16 where the GPU supports it (Ampere and later), else
    fp16. ``fp16`` needs CUDA; ``bf16`` runs on the CPU (autocast) or on a GPU that supports it.
    ``cuda_bf16`` says whether the GPU supports bf16; None asks torch, and only for a CUDA device.
    """
    if device.type != "cuda":
        if choice == "fp16":
            raise DeviceUnavailable(
                f"fp16 training needs a CUDA GPU, not {device}: use bf16 or fp32 (auto) there"
            )
        return BF16 if choice == "bf16" else FP32
    if choice == "fp32":
        return FP32
    if choice == "fp16":
        return FP16
    if cuda_bf16 is None:
        # native bf16 from compute capability 8 (Ampere); older GPUs only emulate it, slowly
        cuda_bf16 = bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8
    if choice == "bf16" and not cuda_bf16:
        raise DeviceUnavailable(f"the GPU {device} has no bf16 support: use fp16 or auto")
    return BF16 if cuda_bf16 else FP16


@dataclass
class TrainConfig:
    sample_rate: SampleRateName = "40k"
    version: Version = "v2"
    f0: bool = True
    epochs: int = 20
    batch_size: int = 4
    save_every: int = 5  # epochs between training checkpoints
    pretrained_g: Path | None = None  # e.g. f0G40k.pth (v2)
    pretrained_d: Path | None = None  # e.g. f0D40k.pth (v2)
    seed: int = 1234
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...
    model_size: ModelSize = "full"  # "tiny" only for tests and benchmarks
    model_name: str = "voice"  # the exported model is exp_dir / f"{model_name}.pth"
    max_frames: int = 900  # longest window per utterance (9 s), as RVC's bucket sampler
    keep_checkpoints: int = 2  # newest G/D pairs kept on disk
    export_precision: Precision = "fp16"
    learning_rate: float | None = None  # None: the recipe's 1e-4 (tiny test models learn faster)
    precision: TrainPrecision = "auto"  # see resolve_precision


@dataclass
class EpochMetrics:
    epoch: int
    steps: int
    seconds: float
    learning_rate: float
    loss_mel: float
    loss_kl: float
    loss_fm: float
    loss_gen: float
    loss_disc: float


@dataclass
class TrainResult:
    model_path: Path
    final_epoch: int
    global_step: int
    resumed_from_epoch: int  # 0 for a fresh start
    metrics: dict[str, float]  # averages over the last epoch trained in this call
    history: list[EpochMetrics] = field(default_factory=list)
    step_mel_losses: list[float] = field(default_factory=list)  # unweighted mel L1 per step
    pretrained: list[PretrainedLoadReport] = field(default_factory=list)


@dataclass
class Trainer:
    """The two networks, their optimisers and what one step needs."""

    config: RVCConfig
    net_g: Synthesizer
    net_d: MultiPeriodDiscriminator
    optim_g: torch.optim.Optimizer
    optim_d: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    precision: MixedPrecision = FP32

    @property
    def use_amp(self) -> bool:
        return self.precision.dtype is not None

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.precision.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision.dtype)

    def step(self, batch: Batch) -> dict[str, float]:
        hp = self.config.train
        audio = self.config.audio
        segment_frames = self.net_g.segment_frames
        with self._autocast():
            out = self.net_g(
                batch.phone,
                batch.phone_lengths,
                batch.pitch,
                batch.pitchf,
                batch.spec,
                batch.spec_lengths,
                batch.sid,
            )
            with torch.autocast(self.device.type, enabled=False):
                real_mel = slice_segments(
                    spec_to_mel(batch.spec.float(), audio), out.ids_slice, segment_frames
                )
                fake_mel = mel_spectrogram(out.audio.float().squeeze(1), audio)
            real_wave = slice_segments(
                batch.wave, out.ids_slice * audio.hop_length, segment_frames * audio.hop_length
            )

            # Discriminator: tell the real slice from the (detached) generated one.
            real_logits, fake_logits, _, _ = self.net_d(real_wave, out.audio.detach())
            with torch.autocast(self.device.type, enabled=False):
                loss_disc, _, _ = discriminator_loss(real_logits, fake_logits)
        self.optim_d.zero_grad(set_to_none=True)
        self.scaler.scale(loss_disc).backward()
        self.scaler.step(self.optim_d)

        # Generator: reconstruct the mel, match the prior, fool the discriminator. The
        # discriminator's weights take no gradient here: what this loss would give them is
        # discarded (optim_d.zero_grad comes before their next use), so the backward pass only
        # carries the gradient through the discriminator to the generated audio, and its real
        # branch keeps no graph. Same updates; a v2 48k step (batch 4, CPU) 11.8 -> 10.8 s.
        self.net_d.requires_grad_(False)
        try:
            with self._autocast():
                _, fake_logits, real_maps, fake_maps = self.net_d(real_wave, out.audio)
                with torch.autocast(self.device.type, enabled=False):
                    mel_l1 = F.l1_loss(real_mel, fake_mel)
                    loss_mel = mel_l1 * hp.c_mel
                    loss_kl = (
                        kl_loss(out.z_p, out.logs_q, out.m_p, out.logs_p, out.z_mask) * hp.c_kl
                    )
                    loss_fm = feature_loss(real_maps, fake_maps)
                    loss_gen, _ = generator_loss(fake_logits)
                    loss_total = loss_gen + loss_fm + loss_mel + loss_kl
            self.optim_g.zero_grad(set_to_none=True)
            self.scaler.scale(loss_total).backward()
        finally:
            self.net_d.requires_grad_(True)
        self.scaler.step(self.optim_g)
        self.scaler.update()
        return {
            "mel_l1": mel_l1.item(),
            "loss_mel": loss_mel.item(),
            "loss_kl": loss_kl.item(),
            "loss_fm": loss_fm.item(),
            "loss_gen": loss_gen.item(),
            "loss_disc": loss_disc.item(),
        }


def build_trainer(config: RVCConfig, train: TrainConfig, device: torch.device) -> Trainer:
    net_g = build_synthesizer(config.synthesizer, config.version, train.f0).to(device)
    net_d = MultiPeriodDiscriminator.from_config(config.discriminator).to(device)
    hp = config.train
    precision = resolve_precision(train.precision, device)

    def adamw(params: object) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, hp.learning_rate, betas=hp.betas, eps=hp.eps)  # type: ignore[arg-type]

    return Trainer(
        config=config,
        net_g=net_g,
        net_d=net_d,
        optim_g=adamw(net_g.parameters()),
        optim_d=adamw(net_d.parameters()),
        scaler=torch.amp.GradScaler(device.type, enabled=precision.scaler),
        device=device,
        precision=precision,
    )


def _prune_checkpoints(exp_dir: Path, keep: int) -> None:
    for prefix in ("G", "D"):
        for old in training_checkpoints(exp_dir, prefix)[:-keep] if keep > 0 else []:
            old.unlink(missing_ok=True)


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows) if rows else float("nan")


def train_model(
    exp_dir: Path, config: TrainConfig, progress: ProgressFn | None = None
) -> TrainResult:
    """Train (or resume training) a voice model on ``exp_dir`` and export it.

    Returns the exported inference model's path and the loss metrics.
    """
    exp_dir = Path(exp_dir)
    device = resolve_device(config.device)
    rvc = get_config(config.version, config.sample_rate, config.model_size)
    if config.learning_rate is not None:
        rvc = replace(rvc, train=replace(rvc.train, learning_rate=config.learning_rate))
    report = progress or (lambda fraction, message: None)

    dataset = VoiceDataset(
        exp_dir,
        rvc.audio,
        rvc.version,
        config.f0,
        segment_frames=rvc.synthesizer.segment_frames,
        max_frames=config.max_frames,
        seed=config.seed,
    )
    torch.manual_seed(config.seed)  # fixes the initial weights
    trainer = build_trainer(rvc, config, device)

    # Resume from the newest G/D pair, else start from the public pretrained weights.
    start_epoch, global_step, resumed_from = 1, 0, 0
    pretrained: list[PretrainedLoadReport] = []
    latest_g = latest_training_checkpoint(exp_dir, "G")
    latest_d = latest_training_checkpoint(exp_dir, "D")
    if latest_g is not None and latest_d is not None:
        load_training_checkpoint(latest_d, trainer.net_d, trainer.optim_d)
        state = load_training_checkpoint(latest_g, trainer.net_g, trainer.optim_g)
        start_epoch, global_step, resumed_from = state.epoch + 1, state.global_step, state.epoch
        log.info("training_resumed", checkpoint=latest_g.name, epoch=state.epoch, step=global_step)
    else:
        if config.pretrained_g is not None:
            pretrained.append(load_pretrained(trainer.net_g, config.pretrained_g))
        if config.pretrained_d is not None:
            pretrained.append(load_pretrained(trainer.net_d, config.pretrained_d))

    # Checkpoints are written after the epoch's decay step, so the optimisers already hold the
    # next epoch's learning rate; the schedule just continues from there.
    scheduler_g = torch.optim.lr_scheduler.ExponentialLR(trainer.optim_g, rvc.train.lr_decay)
    scheduler_d = torch.optim.lr_scheduler.ExponentialLR(trainer.optim_d, rvc.train.lr_decay)

    # A resumed run continues with a different (but reproducible) random stream; the batches
    # themselves depend on the seed and the epoch only.
    torch.manual_seed(config.seed + start_epoch - 1)
    sampler = BucketBatchSampler(dataset.lengths, config.batch_size, seed=config.seed)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=functools.partial(
            collate, hop_length=rvc.audio.hop_length, min_frames=rvc.synthesizer.segment_frames
        ),
        pin_memory=device.type == "cuda",
    )
    log.info(
        "training_batches",
        precision=trainer.precision.name,
        examples=len(dataset),
        batches_per_epoch=len(sampler),
        buckets=len(sampler.buckets),
    )

    history: list[EpochMetrics] = []
    step_mel: list[float] = []
    total_epochs = max(config.epochs, 1)
    trainer.net_g.train()
    trainer.net_d.train()
    for epoch in range(start_epoch, config.epochs + 1):
        started = time.perf_counter()
        learning_rate = trainer.optim_g.param_groups[0]["lr"]
        rows: list[dict[str, float]] = []
        sampler.set_epoch(epoch)
        for batch in loader:
            losses = trainer.step(batch.to(device))
            rows.append(losses)
            step_mel.append(losses["mel_l1"])
            global_step += 1
        scheduler_g.step()
        scheduler_d.step()
        metrics = EpochMetrics(
            epoch=epoch,
            steps=len(rows),
            seconds=time.perf_counter() - started,
            learning_rate=learning_rate,
            loss_mel=_mean(rows, "loss_mel"),
            loss_kl=_mean(rows, "loss_kl"),
            loss_fm=_mean(rows, "loss_fm"),
            loss_gen=_mean(rows, "loss_gen"),
            loss_disc=_mean(rows, "loss_disc"),
        )
        history.append(metrics)
        log.info("training_epoch", **metrics.__dict__)
        if epoch % max(config.save_every, 1) == 0 or epoch == config.epochs:
            for prefix, net, optim in (
                ("G", trainer.net_g, trainer.optim_g),
                ("D", trainer.net_d, trainer.optim_d),
            ):
                save_training_checkpoint(
                    exp_dir / f"{prefix}_{global_step}.pth",
                    net,
                    optim,
                    rvc.train.learning_rate,
                    epoch,
                    global_step,
                )
            _prune_checkpoints(exp_dir, config.keep_checkpoints)
        report(
            epoch / total_epochs,
            f"epoch {epoch}/{config.epochs}: mel {metrics.loss_mel:.3f}, "
            f"kl {metrics.loss_kl:.3f}, disc {metrics.loss_disc:.3f}",
        )

    final_epoch = max(config.epochs, resumed_from)
    model_path = save_inference_model(
        trainer.net_g,
        exp_dir / f"{config.model_name}.pth",
        version=rvc.version,
        info=f"{final_epoch}epoch",
        precision=config.export_precision,
    )
    last = history[-1] if history else None
    result_metrics: dict[str, float] = (
        {
            "loss_mel": last.loss_mel,
            "loss_kl": last.loss_kl,
            "loss_fm": last.loss_fm,
            "loss_gen": last.loss_gen,
            "loss_disc": last.loss_disc,
            "learning_rate": last.learning_rate,
            "epoch_seconds": last.seconds,
        }
        if last is not None
        else {}
    )
    return TrainResult(
        model_path=model_path,
        final_epoch=final_epoch,
        global_step=global_step,
        resumed_from_epoch=resumed_from,
        metrics=result_metrics,
        history=history,
        step_mel_losses=step_mel,
        pretrained=pretrained,
    )
