"""RVC inference: vocals in, the same vocals in the voice model's voice out.

This follows RVC WebUI's published inference recipe, step by step:

1. the vocals at 16 kHz, 48 Hz high-pass (zero phase) against rumble;
2. long vocals cut at their quietest points near every ``center_s`` seconds (searched within
   ``± query_s``), each piece converted with ``pad_s`` seconds of context on both sides that are
   dropped afterwards, so the joins are seamless;
3. f0 of the whole (reflect-padded) signal on the 10 ms grid, transposed by ``2^(key/12)``, and
   median-filtered when ``filter_radius >= 3``;
4. HuBERT/ContentVec features (50 per second) of each piece;
5. optionally, each feature replaced in part (``index_rate``) by the ``1/d²``-weighted mean of its
   8 nearest neighbours in the voice's training features (the index), which moves the timbre
   toward the trained voice;
6. features repeated to 100 per second; where the pitch is 0 (consonants, breaths) the source
   features are kept in proportion ``1 - protect``, which keeps them intelligible;
7. the synthesizer renders audio at the model's rate; the volume envelope is blended back toward
   the source's by ``1 - rms_mix_rate``; the result may be resampled to an output rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from foundation.logging import get_logger
from foundation.progress import ProgressFn
from foundation.segments import quiet_cut_points, spans
from foundation.signal import Allocate, DiskSignal, Signal, in_memory, peak, scale
from schemas.events import ConversionOptions
from streams.allocator import release_freed_memory

log = get_logger(__name__)

SAMPLE_RATE = 16_000  # content features and pitch are computed at 16 kHz
WINDOW = 160  # samples per 10 ms pitch frame at 16 kHz
FEATURE_UPSAMPLE = 2  # content features come at 50/s, the synthesizer wants 100/s
# Pieces start on the content encoder's 20 ms grid, so their features line up with the whole's.
PIECE_ALIGN = FEATURE_UPSAMPLE * WINDOW
RETRIEVAL_NEIGHBOURS = 8
SPEAKER_ID = 0
# Prior noise makes every run differ; a fixed seed per piece makes a conversion reproducible.
NOISE_SEED = 1234

LoadedIndex = tuple[Any, np.ndarray]  # (faiss index, the training features it holds)


def _no_progress(fraction: float, message: str) -> None:
    return None


class ContentExtractor(Protocol):
    """What the pipeline needs of a content encoder (agents.voice.content.ContentEncoder)."""

    def extract(self, audio16k: torch.Tensor, version: str) -> Any:
        """``(frames, 768 | 256)`` content features at 50 frames per second."""
        ...


class PitchExtractor(Protocol):
    name: str

    def compute(self, audio16k: np.ndarray, p_len: int | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class Windows:
    """RVC's piece lengths, in seconds (its CPU / fp32 defaults: x_pad 1, x_query 6, x_center 38,
    x_max 41). Vocals no longer than ``max_s`` are converted in one piece."""

    pad_s: float = 1.0
    query_s: float = 6.0
    center_s: float = 38.0
    max_s: float = 41.0

    def samples(self, seconds: float) -> int:
        # Whole content frames, so every piece starts on the 20 ms feature grid.
        return round(seconds * SAMPLE_RATE / PIECE_ALIGN) * PIECE_ALIGN


# --------------------------------------------------------------------------------------------------
# The steps, each testable on its own
# --------------------------------------------------------------------------------------------------


def median_radius(filter_radius: int, method: str = "harvest") -> int:
    """The median-filter radius for RVC's ``filter_radius`` option and f0 ``method``.

    RVC smooths only Harvest's track, with a 3-frame median when ``filter_radius >= 3`` (any
    larger value is the same 3 frames); the other trackers' tracks are used as they come.
    """
    return 1 if method == "harvest" and filter_radius >= 3 else 0


def pitch_track(
    audio16k: np.ndarray,
    p_len: int,
    extractor: PitchExtractor,
    f0_up_key: int,
    filter_radius: int,
    unvoiced_f0: str = "keep",
) -> tuple[np.ndarray, np.ndarray]:
    """``(coarse pitch 1..255, f0 in Hz)`` per 10 ms frame, transposed by ``f0_up_key``.

    The Hz track is what the NSF decoder sings; the coarse one is the pitch embedding's index.
    RVC's order: track, median (Harvest only), fill unvoiced frames (``unvoiced_f0 =
    'interpolate'``, RVC's current behaviour; ``'keep'`` leaves them 0 as the classic pipeline
    does, so ``protect`` applies), transpose, quantise.
    """
    from agents.voice.f0 import coarse_f0, interpolate_unvoiced, median_filter_f0, shift_f0

    # The whole track first, cut to ``p_len`` last: the median at the end then sees the real
    # frames after it, not padding.
    f0 = np.asarray(extractor.compute(np.asarray(audio16k, dtype=np.float32)))
    radius = median_radius(filter_radius, extractor.name)
    if radius:
        f0 = median_filter_f0(f0, radius)
    if unvoiced_f0 == "interpolate":
        f0 = interpolate_unvoiced(f0)
    f0 = shift_f0(f0, f0_up_key)[:p_len]
    f0 = np.pad(f0, (0, p_len - len(f0))).astype(np.float32)
    return coarse_f0(f0), f0


def retrieve_features(
    features: np.ndarray, index: LoadedIndex | None, index_rate: float
) -> np.ndarray:
    """Blend ``features`` toward their nearest neighbours in the voice's index by ``index_rate``."""
    if index is None or index_rate <= 0:
        return features
    from agents.voice.index import blend_features

    faiss_index, big_npy = index
    blended = blend_features(
        np.ascontiguousarray(features, dtype=np.float32),
        faiss_index,
        big_npy,
        index_rate,
        k=RETRIEVAL_NEIGHBOURS,
    )
    if isinstance(blended, torch.Tensor):
        blended = blended.detach().cpu().numpy()
    return np.asarray(blended, dtype=np.float32)


# HuBERT's framing (400-sample window, 320-sample hop) gives 2 * features one or two frames
# short of the pitch grid; RVC renders only the frames the features cover.
FEATURE_SHORTFALL = 2


def rendered_frames(frames: int, feature_frames: int) -> int:
    """How many of a piece's ``frames`` pitch frames are synthesised: RVC's
    ``min(frames, 2 * feature_frames)``, so the prior noise has RVC's shape and the same seed
    gives RVC's output. A longer shortfall (another encoder's framing) is padded instead."""
    covered = FEATURE_UPSAMPLE * feature_frames
    return covered if frames - FEATURE_SHORTFALL <= covered < frames else frames


def upsample_features(features: torch.Tensor, frames: int) -> torch.Tensor:
    """50/s → 100/s (each frame twice, as RVC's nearest interpolation), exactly ``frames`` long.

    HuBERT yields a frame or two fewer than the pitch grid; the last frame is repeated. Those
    frames fall in a piece's context margin, which is cut away.
    """
    doubled = features.repeat_interleave(FEATURE_UPSAMPLE, dim=0)
    if doubled.shape[0] < frames:
        tail = doubled[-1:].expand(frames - doubled.shape[0], -1)
        doubled = torch.cat([doubled, tail], dim=0)
    return doubled[:frames]


def protect_unvoiced(
    converted: torch.Tensor, source: torch.Tensor, f0: torch.Tensor, protect: float
) -> torch.Tensor:
    """Keep consonants and breaths recognisable: where ``f0`` is 0 the features become
    ``protect * converted + (1 - protect) * source``; voiced frames keep ``converted``.

    ``protect >= 0.5`` turns protection off (RVC's convention).
    """
    if protect >= 0.5:
        return converted
    weight = torch.where(f0 > 0, torch.ones_like(f0), torch.full_like(f0, protect))
    weight = weight.to(converted.dtype).unsqueeze(-1)
    return converted * weight + source * (1.0 - weight)


ENVELOPE_CHUNK = 1 << 20
"""Samples per step of the volume-envelope mix, so it needs a few MB whatever the song's length."""


def _rms_frames(audio: Signal, sr: int) -> np.ndarray:
    """RMS over 1 s frames every 0.5 s, centred on zero-padded audio (``librosa.feature.rms``).

    A frame is exactly two half-second blocks, so the frames come from per-block sums of
    squares, taken a few blocks at a time: no full-length float64 copy of the audio.
    """
    hop = sr // 2
    frame = 2 * hop
    x = audio  # an array or a disk signal: read a chunk at a time
    count = 1 + len(x) // hop
    blocks = np.zeros(count + 1)  # blocks[k + 1]: energy of x[k * hop : (k + 1) * hop]
    step = max(1, ENVELOPE_CHUNK // max(hop, 1)) * hop
    for first in range(0, len(x), step):
        chunk = np.asarray(x[first : first + step], dtype=np.float64)
        whole = len(chunk) // hop * hop
        k = first // hop
        if whole:
            blocks[k + 1 : k + 1 + whole // hop] = np.square(chunk[:whole]).reshape(-1, hop).sum(1)
        if whole < len(chunk):
            blocks[k + 1 + whole // hop] = float(np.square(chunk[whole:]).sum())
    energy = blocks[:-1] + blocks[1:]  # frame j spans blocks j - 1 and j
    return np.sqrt(np.maximum(energy, 0.0) / frame)


def _stretch(frames: np.ndarray, length: int, first: int, last: int) -> np.ndarray:
    """Samples ``first..last`` of ``frames`` stretched to ``length`` samples as
    ``torch.nn.functional.interpolate(mode='linear')`` does: sample ``i`` reads frame position
    ``(i + 0.5) * frames / length - 0.5``, edge values held."""
    count = len(frames)
    positions = (np.arange(first, last, dtype=np.float64) + 0.5) * (count / length) - 0.5
    return np.interp(np.maximum(positions, 0.0), np.arange(count), frames)


def _rms_envelope(audio: np.ndarray, sr: int, length: int) -> np.ndarray:
    """RMS over 1 s frames every 0.5 s, stretched to ``length`` samples, as RVC's ``change_rms``.

    Frames are centred on zero-padded audio (``librosa.feature.rms``, :func:`_rms_frames`); the
    stretch is ``torch.nn.functional.interpolate(mode='linear')`` (:func:`_stretch`).
    """
    return _stretch(_rms_frames(audio, sr), length, 0, length)


def mix_volume_envelope(
    source: Signal,
    source_sr: int,
    converted: Signal,
    converted_sr: int,
    rate: float,
    out: Signal | None = None,
) -> Signal:
    """Give ``converted`` the volume envelope ``source^(1-rate) * converted^rate``.

    ``rate`` 1 keeps the converted audio's own loudness contour; 0 copies the source's. The gain
    curve is RVC's ``change_rms`` (tests/unit/test_rvc_oracle_pipeline.py holds them equal). It
    is applied ``ENVELOPE_CHUNK`` samples at a time, into ``out`` (which may be ``converted``
    itself, an array or a :class:`foundation.signal.DiskSignal`) or a new float32 array.
    """
    if rate >= 1.0 or len(converted) == 0:
        return converted
    length = len(converted)
    source_frames = _rms_frames(source, source_sr)
    converted_frames = _rms_frames(converted, converted_sr)
    result: Signal = np.empty(length, dtype=np.float32) if out is None else out
    for first in range(0, length, ENVELOPE_CHUNK):
        last = min(first + ENVELOPE_CHUNK, length)
        source_rms = _stretch(source_frames, length, first, last)
        converted_rms = np.maximum(_stretch(converted_frames, length, first, last), 1e-6)
        gain = np.power(source_rms, 1.0 - rate) * np.power(converted_rms, rate - 1.0)
        result[first:last] = converted[first:last] * gain
    return result


def cut_points(audio16k: np.ndarray, windows: Windows) -> list[int]:
    """Where to split the vocals (empty when they fit one piece)."""
    if len(audio16k) <= windows.samples(windows.max_s):
        return []
    return quiet_cut_points(
        audio16k,
        every=windows.samples(windows.center_s),
        search=windows.samples(windows.query_s),
        window=WINDOW,
        align=PIECE_ALIGN,
    )


# --------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------


@dataclass
class _Piece:
    first: int  # where the piece starts in the padded whole (pad_s context on each side)
    last: int
    frames: int  # pitch frames of the padded piece
    first_frame: int  # in the padded whole's frame grid
    keep_frames: int  # frames after the leading context that belong to this piece


def _pieces(length: int, pad: int, windows: Windows, audio16k: np.ndarray) -> list[_Piece]:
    pieces = []
    for start, end in spans(length, cut_points(audio16k, windows)):
        frames = (end + 2 * pad - start) // WINDOW
        pieces.append(
            _Piece(
                first=start,
                last=end + 2 * pad,
                frames=frames,
                first_frame=start // WINDOW,
                keep_frames=max(0, frames - 2 * pad // WINDOW),
            )
        )
    return pieces


def padded_span(audio: np.ndarray, pad: int, first: int, last: int) -> np.ndarray:
    """``np.pad(audio, pad, mode='reflect')[first:last]`` without padding the whole song."""
    length = len(audio)
    if pad >= length:  # reflections of reflections: rare (a clip shorter than the context)
        return np.pad(audio, (pad, pad), mode="reflect")[first:last]
    last = min(max(first, last), length + 2 * pad)
    parts = []
    end = min(last, pad)
    if first < end:  # padded[j] = audio[pad - j] before the song
        parts.append(audio[pad - end + 1 : pad - first + 1][::-1])
    low, high = max(first, pad), min(last, pad + length)
    if low < high:
        parts.append(audio[low - pad : high - pad])
    start = max(first, pad + length)
    if start < last:  # padded[j] = audio[2 * (length - 1) - (j - pad)] after it
        mirror = 2 * (length - 1) + pad
        parts.append(audio[mirror - last + 1 : mirror - start + 1][::-1])
    if not parts:
        return audio[:0]
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _features(
    encoder: ContentExtractor, audio: np.ndarray, version: str, device: torch.device
) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    with torch.no_grad():
        features = encoder.extract(tensor.to(device), version)
    features = torch.as_tensor(features)
    if features.dim() == 3:  # (1, frames, dim)
        features = features[0]
    return features.float()


@dataclass
class PreparedPiece:
    """One piece's synthesizer inputs: features at the pitch frame rate, and its pitch."""

    phone: torch.Tensor  # (frames, dim)
    coarse: torch.Tensor | None  # (frames,) int64, None for a model without pitch
    nsf: torch.Tensor | None  # (frames,) Hz
    frames: int


def prepare_piece(
    voice_model: Any,
    encoder: ContentExtractor,
    index: LoadedIndex | None,
    audio16k: np.ndarray,
    frames: int,
    pitch: np.ndarray | None,
    pitchf: np.ndarray | None,
    params: ConversionOptions,
) -> PreparedPiece:
    """Content features, retrieval and protection for one piece."""
    device = next(voice_model.synthesizer.parameters()).device
    source = _features(encoder, audio16k, voice_model.version, device).cpu()
    if source.shape[1] != voice_model.phone_dim:
        from foundation.errors import StageError

        raise StageError(
            "model_mismatch",
            f"the content encoder gives {source.shape[1]}-d features, the voice model "
            f"({voice_model.version}) needs {voice_model.phone_dim}",
        )
    converted = torch.from_numpy(retrieve_features(source.numpy(), index, params.index_rate))
    frames = rendered_frames(frames, source.shape[0])
    converted = upsample_features(converted, frames)
    use_pitch = voice_model.f0 and pitch is not None and pitchf is not None
    if not use_pitch:
        return PreparedPiece(converted, None, None, frames)
    assert pitch is not None and pitchf is not None
    nsff0 = torch.from_numpy(np.asarray(pitchf[:frames], dtype=np.float32))
    converted = protect_unvoiced(
        converted, upsample_features(source, frames), nsff0, params.protect
    )
    coarse = torch.from_numpy(np.asarray(pitch[:frames], dtype=np.int64))
    return PreparedPiece(converted, coarse, nsff0, frames)


def _stack(rows: list[torch.Tensor], length: int) -> torch.Tensor:
    """Rows of different lengths, zero-padded on the frame axis to ``length`` and stacked."""
    return torch.stack(
        [torch.nn.functional.pad(row, (0, 0) * (row.dim() - 1) + (0, length - row.shape[0]))
         for row in rows]
    )  # fmt: skip


def synthesize(
    voice_model: Any,
    pieces: list[PreparedPiece],
    seed: int,
    keep: tuple[int, int | None] = (0, None),
) -> list[np.ndarray]:
    """Run the synthesizer once on a batch of pieces; each gets its frames ``keep[0]`` up to
    ``keep[1]`` (default: all), ``hop`` samples per frame.

    Shorter pieces are padded and masked by their lengths, as VITS does for batches. A model
    readied by :func:`agents.voice.inference.prepare_for_inference` takes the fast path, which
    decodes only the kept frames; otherwise the plain :meth:`Synthesizer.infer` runs.
    """
    synthesizer = voice_model.synthesizer
    device = next(synthesizer.parameters()).device
    dtype = next(synthesizer.parameters()).dtype
    longest = max(piece.frames for piece in pieces)
    start, stop = keep[0], min(longest, keep[1] if keep[1] is not None else longest)
    phone = _stack([p.phone for p in pieces], longest).to(device, dtype)
    lengths = torch.tensor([p.frames for p in pieces], device=device)
    sid = torch.full((len(pieces),), SPEAKER_ID, device=device)
    with_pitch = pieces[0].coarse is not None
    coarse = _stack([p.coarse for p in pieces], longest).to(device) if with_pitch else None  # type: ignore[misc]
    nsf = _stack([p.nsf for p in pieces], longest).to(device, dtype) if with_pitch else None  # type: ignore[misc]
    devices = [device] if device.type == "cuda" else []
    fast = getattr(voice_model, "fast", None)
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if fast is not None:
            from agents.voice.inference import infer_window

            audio = infer_window(fast, phone, lengths, coarse, nsf, sid, start, stop)
            first = 0
        else:
            audio = synthesizer.infer(phone, lengths, coarse, nsf, sid)
            first = start
    if isinstance(audio, tuple | list):  # RVC-style (audio, mask, ...) returns
        audio = audio[0]
    audio = audio.reshape(len(pieces), -1).float().cpu()
    hop = synth_hop(voice_model)
    return [
        audio[i, first * hop : (first + max(0, min(stop, piece.frames) - start)) * hop].numpy()
        for i, piece in enumerate(pieces)
    ]


def convert_audio16k(
    audio16k: np.ndarray,
    voice_model: Any,
    encoder: ContentExtractor,
    index: LoadedIndex | None,
    params: ConversionOptions,
    f0_extractor: PitchExtractor | None,
    progress: ProgressFn = _no_progress,
    windows: Windows = Windows(),
    batch_pieces: int = 1,
    allocate: Allocate = in_memory,
) -> Signal:
    """Converted vocals at the model's rate from high-passed 16 kHz vocals, rendered piece by
    piece into a signal made by ``allocate`` (by default a float32 array; a disk signal keeps a
    long song out of memory).

    ``batch_pieces`` pieces go through the synthesizer together (worth it on a GPU).
    """
    if len(audio16k) < WINDOW:
        from foundation.errors import StageError

        raise StageError("empty_audio", "the vocals are shorter than one 10 ms frame")
    tgt_sr = int(voice_model.tgt_sr)
    hop = synth_hop(voice_model)
    pad = windows.samples(windows.pad_s)
    pad_frames = pad // WINDOW
    length = len(audio16k)

    pitch = pitchf = None
    if voice_model.f0:
        if f0_extractor is None:
            raise ValueError("a pitch-guided voice model needs an f0 extractor")
        progress(0.02, f"pitch ({f0_extractor.name})")
        padded = np.pad(audio16k, (pad, pad), mode="reflect")
        pitch, pitchf = pitch_track(
            padded,
            len(padded) // WINDOW,
            f0_extractor,
            params.f0_up_key,
            params.filter_radius,
            params.unvoiced_f0,
        )
        del padded  # the pieces are cut from ``audio16k`` itself (padded_span)

    pieces = _pieces(length, pad, windows, audio16k)
    # One output signal, filled piece by piece: a piece's features and audio are dropped as soon
    # as it is rendered, so memory does not grow with the song beyond this signal (none of it
    # when ``allocate`` keeps it on disk).
    expected = round(length * tgt_sr / SAMPLE_RATE)
    converted = allocate(expected)
    batch = max(1, batch_pieces)
    for first in range(0, len(pieces), batch):
        group = pieces[first : first + batch]
        prepared = [
            prepare_piece(
                voice_model,
                encoder,
                index,
                padded_span(audio16k, pad, piece.first, piece.last),
                piece.frames,
                pitch[piece.first_frame : piece.first_frame + piece.frames]
                if pitch is not None
                else None,
                pitchf[piece.first_frame : piece.first_frame + piece.frames]
                if pitchf is not None
                else None,
                params,
            )
            for piece in group
        ]
        # One seed per batch: with batch_pieces=1 each piece keeps its own, as before.
        keep = (pad_frames, pad_frames + max(piece.keep_frames for piece in group))
        for piece, rendered in zip(
            group, synthesize(voice_model, prepared, NOISE_SEED + first, keep), strict=True
        ):
            at = piece.first_frame * hop
            part = rendered[: min(piece.keep_frames * hop, max(0, expected - at))]
            converted[at : at + len(part)] = part
        del prepared
        # What the piece freed goes back to the kernel: without it the heap keeps the holes
        # and RSS grows by ~30 MB per piece (a 10-minute song: +0.5 GB).
        release_freed_memory()
        done = first + len(group)
        progress(0.1 + 0.85 * done / len(pieces), f"converted piece {done}/{len(pieces)}")

    mix_volume_envelope(
        audio16k, SAMPLE_RATE, converted, tgt_sr, params.rms_mix_rate, out=converted
    )
    loudest = peak(converted)
    if loudest > 0.99:  # RVC scales down instead of clipping
        scale(converted, 0.99 / loudest)
    return converted


def synth_hop(voice_model: Any) -> int:
    """Output samples per 10 ms frame (the decoder's upsampling), e.g. 400 at 40 kHz."""
    synthesizer = voice_model.synthesizer
    hop = getattr(synthesizer, "hop_length", None)
    if hop is None:
        hop = math.prod(synthesizer.config.upsample_rates)
    return int(hop)


def convert_rvc(
    vocals_path: Path,
    voice_model: Any,
    encoder: ContentExtractor,
    index: LoadedIndex | None,
    params: ConversionOptions,
    f0_extractor: PitchExtractor | None,
    progress: ProgressFn = _no_progress,
    output_sr: int | None = None,
    windows: Windows = Windows(),
    batch_pieces: int = 1,
    allocate: Allocate = in_memory,
) -> tuple[Signal, int]:
    """The vocals file converted into ``voice_model``'s voice: ``(mono float32 signal, rate)``.

    The rate is the model's own (32/40/48 kHz) unless ``output_sr`` asks for another (the
    stems' rate, so the mixer lines the vocals up with the accompaniment). The signal is made
    by ``allocate``: an array by default; with :meth:`DiskSignal.factory` the converted song is
    never held in memory, whatever its length.
    """
    from foundation.audio import highpass_48hz, load_audio
    from foundation.resample import resample_signal

    audio16k = highpass_48hz(
        load_audio(vocals_path, SAMPLE_RATE), SAMPLE_RATE, zero_phase=True, overwrite=True
    )
    converted = convert_audio16k(
        audio16k, voice_model, encoder, index, params, f0_extractor, progress, windows,
        batch_pieces, allocate,
    )  # fmt: skip
    sr = int(voice_model.tgt_sr)
    if output_sr and output_sr != sr:
        rendered = converted
        converted = resample_signal(rendered, sr, output_sr, allocate)
        if isinstance(rendered, DiskSignal):
            rendered.close()
        sr = output_sr
    log.info(
        "vocals converted",
        backend="rvc",
        seconds=round(len(audio16k) / SAMPLE_RATE, 2),
        model_sr=int(voice_model.tgt_sr),
        f0=bool(voice_model.f0),
        version=voice_model.version,
        index=index is not None,
    )
    return converted, sr
