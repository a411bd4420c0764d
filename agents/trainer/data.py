"""Training examples read from an RVC experiment directory.

Layout (written by ``preprocess`` and ``features``)::

    0_gt_wavs/<name>.wav          ground-truth audio at the model rate (mono)
    2a_f0/<name>[.wav].npy        coarse pitch (int, 1..255; 100 frames/s)
    2b-f0nsf/<name>[.wav].npy     pitch in Hz (100 frames/s)
    3_feature768/<name>.npy       v2 content features (50 frames/s)   — 3_feature256 for v1

As in RVC, content features are repeated twice to reach the 100 frames/s of the spectrogram
(hop = sr / 100) and of the pitch tracks; every stream is then cut to the shortest. Long
utterances are cropped to a random window of ``max_frames``; the synthesizer then picks its own
random ``segment_frames`` slice inside it.

Batches are drawn by :class:`BucketBatchSampler`: utterances of similar length share a batch, so
a batch is padded little (the text and posterior encoders run over the padded length).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset, Sampler

from agents.voice.configs import PHONE_DIMS, AudioConfig, Version
from agents.voice.modules.spectral import linear_spectrogram
from foundation.errors import StageError
from foundation.logging import get_logger

log = get_logger()

GT_WAVS_DIR = "0_gt_wavs"
COARSE_F0_DIR = "2a_f0"
F0_HZ_DIR = "2b-f0nsf"
FEATURE_REPEAT = 2  # 50 Hz content frames → 100 Hz spectrogram frames
# Spectrogram-frame bucket edges (100 frames = 1 s), RVC's: a bucket holds lengths in (b_i, b_i+1].
BUCKET_BOUNDARIES = (100, 200, 300, 400, 500, 600, 700, 800, 900)


def feature_dir_name(version: Version) -> str:
    return f"3_feature{PHONE_DIMS[version]}"


@dataclass(frozen=True)
class ExampleFiles:
    name: str
    wav: Path
    phone: Path
    pitch: Path | None
    pitchf: Path | None


def _first_existing(directory: Path, name: str) -> Path | None:
    # RVC names pitch files "<name>.wav.npy"; accept plain "<name>.npy" too.
    for candidate in (directory / f"{name}.npy", directory / f"{name}.wav.npy"):
        if candidate.is_file():
            return candidate
    return None


def find_examples(exp_dir: Path, version: Version, use_f0: bool) -> list[ExampleFiles]:
    """Every utterance that has all the files training needs, in name order."""
    wav_dir = Path(exp_dir) / GT_WAVS_DIR
    examples: list[ExampleFiles] = []
    skipped = 0
    for wav in sorted(wav_dir.glob("*.wav")):
        name = wav.stem
        phone = _first_existing(Path(exp_dir) / feature_dir_name(version), name)
        pitch = _first_existing(Path(exp_dir) / COARSE_F0_DIR, name) if use_f0 else None
        pitchf = _first_existing(Path(exp_dir) / F0_HZ_DIR, name) if use_f0 else None
        if phone is None or (use_f0 and (pitch is None or pitchf is None)):
            skipped += 1
            continue
        examples.append(ExampleFiles(name, wav, phone, pitch, pitchf))
    if skipped:
        log.warning("training_examples_skipped", skipped=skipped, reason="missing feature files")
    return examples


@dataclass
class Example:
    phone: torch.Tensor  # [t, phone_dim]
    pitch: torch.Tensor | None  # [t] long
    pitchf: torch.Tensor | None  # [t] float Hz
    spec: torch.Tensor  # [spec_channels, t]
    wave: torch.Tensor  # [1, t * hop]


@dataclass
class Batch:
    phone: torch.Tensor  # [b, t, phone_dim]
    phone_lengths: torch.Tensor
    pitch: torch.Tensor | None  # [b, t]
    pitchf: torch.Tensor | None
    spec: torch.Tensor  # [b, spec_channels, t]
    spec_lengths: torch.Tensor
    wave: torch.Tensor  # [b, 1, t * hop]
    wave_lengths: torch.Tensor
    sid: torch.Tensor  # [b]

    def to(self, device: torch.device | str) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(
            phone=self.phone.to(device, non_blocking=True),
            phone_lengths=self.phone_lengths.to(device),
            pitch=move(self.pitch),
            pitchf=move(self.pitchf),
            spec=self.spec.to(device, non_blocking=True),
            spec_lengths=self.spec_lengths.to(device),
            wave=self.wave.to(device, non_blocking=True),
            wave_lengths=self.wave_lengths.to(device),
            sid=self.sid.to(device),
        )


class VoiceDataset(Dataset[Example]):
    """One single-speaker RVC experiment directory as training examples (speaker id 0)."""

    def __init__(
        self,
        exp_dir: Path,
        audio: AudioConfig,
        version: Version,
        use_f0: bool,
        segment_frames: int,
        max_frames: int = 900,
        seed: int = 0,
    ) -> None:
        self.audio = audio
        self.version = version
        self.use_f0 = use_f0
        self.segment_frames = segment_frames
        self.max_frames = max(max_frames, segment_frames)
        self._rng = random.Random(seed)
        files = find_examples(exp_dir, version, use_f0)
        if not files:
            raise StageError(
                "dataset_empty",
                f"no training examples in {exp_dir}: need {GT_WAVS_DIR}/*.wav with "
                f"{feature_dir_name(version)}"
                + (f", {COARSE_F0_DIR}, {F0_HZ_DIR}" if use_f0 else ""),
            )
        # Utterances shorter than one decoder segment cannot be sliced; RVC's slicer never makes
        # them, but an odd dataset might.
        counted = [(f, self._frame_count(f)) for f in files]
        kept = [(f, n) for f, n in counted if n >= segment_frames]
        self.files = [f for f, _ in kept]
        # Spectrogram frames each example will have (after the max_frames crop), for bucketing.
        self.lengths = [min(n, self.max_frames) for _, n in kept]
        if not self.files:
            raise StageError(
                "dataset_too_short",
                f"every utterance is shorter than {segment_frames} frames "
                f"({segment_frames * audio.hop_length / audio.sampling_rate:.2f} s)",
            )

    def _frame_count(self, files: ExampleFiles) -> int:
        samples = sf.info(str(files.wav)).frames
        phone_frames = np.load(files.phone, mmap_mode="r").shape[0] * FEATURE_REPEAT
        counts = [samples // self.audio.hop_length, phone_frames]
        for pitch in (files.pitch, files.pitchf):
            if pitch is not None:
                counts.append(np.load(pitch, mmap_mode="r").shape[0])
        return min(counts)

    def __len__(self) -> int:
        return len(self.files)

    def _load_wave(self, path: Path) -> torch.Tensor:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        if rate != self.audio.sampling_rate:
            # preprocess resamples to the model rate, so this is a mixed-up experiment dir
            raise StageError(
                "internal_error",
                f"{path.name} is {rate} Hz but the model trains at {self.audio.sampling_rate} Hz",
            )
        return torch.from_numpy(data.mean(axis=1))

    def __getitem__(self, index: int) -> Example:
        files = self.files[index]
        hop = self.audio.hop_length
        wave = self._load_wave(files.wav)
        phone = np.repeat(np.load(files.phone).astype(np.float32), FEATURE_REPEAT, axis=0)
        pitch = np.load(files.pitch).astype(np.int64) if files.pitch is not None else None
        pitchf = np.load(files.pitchf).astype(np.float32) if files.pitchf is not None else None

        frames = min(wave.shape[0] // hop, phone.shape[0])
        if pitch is not None and pitchf is not None:
            frames = min(frames, pitch.shape[0], pitchf.shape[0])
        start = 0
        if frames > self.max_frames:
            start = self._rng.randrange(frames - self.max_frames + 1)
            frames = self.max_frames
        window = slice(start, start + frames)

        wave = wave[start * hop : (start + frames) * hop]
        spec = linear_spectrogram(wave.unsqueeze(0), self.audio).squeeze(0)[:, :frames]
        return Example(
            phone=torch.from_numpy(np.ascontiguousarray(phone[window])),
            pitch=None if pitch is None else torch.from_numpy(np.clip(pitch[window], 0, 255)),
            pitchf=None if pitchf is None else torch.from_numpy(pitchf[window]),
            spec=spec,
            wave=wave.unsqueeze(0),
        )


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices grouped by length, every index exactly once per epoch.

    ``boundaries`` split lengths into buckets ``(-inf, b0], (b0, b1], …, (b_last, inf)``. Each
    bucket is shuffled and cut into full batches of ``batch_size`` from that bucket alone, so
    their padding is at most the bucket's width. What is left of each bucket (fewer than
    ``batch_size``) is pooled, sorted by length and cut into batches too, so an epoch has as many
    steps as plain random batching (``ceil(n / batch_size)``) and those few batches hold
    neighbours in length. RVC's sampler instead repeats examples to fill its buckets and drops
    lengths outside the edges; here nothing is repeated or dropped. All batches are then shuffled
    together. The order is a function of ``seed`` and the epoch set by :meth:`set_epoch` only, so
    a resumed run sees the same batches as one that never stopped.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        boundaries: Sequence[int] = BUCKET_BOUNDARIES,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        edges = sorted(boundaries)
        buckets: list[list[int]] = [[] for _ in range(len(edges) + 1)]
        for index, length in enumerate(lengths):
            buckets[bisect.bisect_left(edges, length)].append(index)
        self.lengths = list(lengths)
        self.buckets = [b for b in buckets if b]
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed % 2**64, self.epoch % 2**64])
        size = self.batch_size
        batches: list[list[int]] = []
        rest: list[int] = []
        for bucket in self.buckets:
            order = [bucket[i] for i in rng.permutation(len(bucket))]
            full = len(order) - len(order) % size
            batches.extend(order[i : i + size] for i in range(0, full, size))
            rest.extend(order[full:])
        rest.sort(key=self.lengths.__getitem__)  # stable: equal lengths keep the shuffled order
        batches.extend(rest[i : i + size] for i in range(0, len(rest), size))
        return iter([batches[i] for i in rng.permutation(len(batches))])


def collate(examples: list[Example], hop_length: int, min_frames: int = 0) -> Batch:
    """Zero-pad a list of examples into a batch (at least ``min_frames`` long)."""
    count = len(examples)
    frames = max(max(e.spec.shape[1] for e in examples), min_frames)
    samples = frames * hop_length
    spec_channels = examples[0].spec.shape[0]
    phone_dim = examples[0].phone.shape[1]
    use_f0 = examples[0].pitch is not None

    phone = torch.zeros(count, frames, phone_dim)
    spec = torch.zeros(count, spec_channels, frames)
    wave = torch.zeros(count, 1, samples)
    pitch = torch.zeros(count, frames, dtype=torch.long) if use_f0 else None
    pitchf = torch.zeros(count, frames) if use_f0 else None
    lengths = torch.zeros(count, dtype=torch.long)
    wave_lengths = torch.zeros(count, dtype=torch.long)
    for i, example in enumerate(examples):
        n = example.spec.shape[1]
        phone[i, :n] = example.phone[:n]
        spec[i, :, :n] = example.spec
        wave[i, :, : example.wave.shape[1]] = example.wave
        if pitch is not None and pitchf is not None and example.pitch is not None:
            pitch[i, :n] = example.pitch[:n]
            assert example.pitchf is not None
            pitchf[i, :n] = example.pitchf[:n]
        lengths[i] = n
        wave_lengths[i] = example.wave.shape[1]
    return Batch(
        phone=phone,
        phone_lengths=lengths,
        pitch=pitch,
        pitchf=pitchf,
        spec=spec,
        spec_lengths=lengths.clone(),
        wave=wave,
        wave_lengths=wave_lengths,
        sid=torch.zeros(count, dtype=torch.long),
    )
