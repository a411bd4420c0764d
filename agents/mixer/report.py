"""A one-page picture of a job: waveforms, spectrograms and pitch of original, converted and mix.

For a person checking a cover by eye: did the conversion keep the melody (the f0 curves should run
in parallel, offset by the transpose), is the mix clipped or too quiet, is there energy where
there should be none. Pitch is WORLD's DIO + StoneMask (``pyworld``) at a 10 ms frame period on a
16 kHz copy: a few seconds for a whole song on a CPU, and the same tracker the WORLD fallback voice
uses.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg

# The Figure API renders with Agg without pyplot: no display, no global backend state to set.
from matplotlib.figure import Figure
from scipy.signal import stft

from agents.voice.f0.world_f0 import world_f0
from foundation.audio import decode
from foundation.levels import peak_db
from foundation.logging import get_logger
from foundation.resample import resample
from streams.keys import job_event_key, job_prefix
from streams.store import ObjectNotFound, ObjectStore, get_json

log = get_logger(__name__)

ANALYSIS_RATE = 16000
FRAME_PERIOD_MS = 10.0
F0_FLOOR_HZ = 60.0
F0_CEIL_HZ = 1100.0
# DIO decimates by this before its search (16 kHz -> 4 kHz, still above twice F0_CEIL_HZ): four
# times faster on a whole song, and StoneMask refines the estimate afterwards.
DIO_SPEED = 4
F0_MIN_LEVEL_DB = 45.0  # frames this far below the loudest frame count as unvoiced
# Log-frequency axis from the lowest sung note to the top of the vowel formants: the f0 curve
# then shows across the whole figure height instead of a thin line at the bottom.
SPECTROGRAM_MIN_HZ = 50.0
SPECTROGRAM_MAX_HZ = 8000.0
FREQUENCY_TICKS_HZ = (100, 200, 500, 1000, 2000, 5000)
SPECTROGRAM_COLUMNS = 1500
WAVEFORM_POINTS = 4000  # min/max pairs drawn per waveform: enough for any figure width

ORIGINAL, CONVERTED, MIX = "original vocals", "converted vocals", "mix"
COLOURS = {ORIGINAL: "tab:blue", CONVERTED: "tab:orange", MIX: "tab:green"}


@dataclass
class _Track:
    name: str
    audio: np.ndarray  # mono float64 at ANALYSIS_RATE
    peak_db: float  # sample peak of the file itself, before downmix: shows clipping
    duration_s: float


def _load(name: str, path: Path) -> _Track:
    audio, rate = decode(path)
    mono = resample(audio.mean(axis=1), rate, ANALYSIS_RATE)
    return _Track(
        name=name,
        audio=mono.astype(np.float64),
        peak_db=peak_db(audio),
        duration_s=audio.shape[0] / rate,
    )


def _f0(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(times, f0 in Hz with NaN where unvoiced)."""
    f0, times = world_f0(
        audio,
        ANALYSIS_RATE,
        "dio",
        f0_floor=F0_FLOOR_HZ,
        f0_ceil=F0_CEIL_HZ,
        frame_period_ms=FRAME_PERIOD_MS,
        dio_speed=DIO_SPEED,
    )
    # DIO finds periodicity even in a fade-out far below anything audible: drop those frames.
    hop = int(ANALYSIS_RATE * FRAME_PERIOD_MS / 1000)
    frames = np.minimum((times * ANALYSIS_RATE).astype(int) // hop, audio.size // hop - 1)
    usable = audio[: (audio.size // hop) * hop].reshape(-1, hop)
    level = np.sqrt(np.mean(usable**2, axis=1))[np.maximum(frames, 0)]
    audible = level > level.max() * 10 ** (-F0_MIN_LEVEL_DB / 20) if level.size else level
    return times, np.where((f0 > 0) & audible, f0, np.nan)


def _plot_waveform(ax: Axes, track: _Track, duration_s: float) -> None:
    audio = track.audio
    bins = min(WAVEFORM_POINTS, max(1, audio.size))
    edges = np.linspace(0, audio.size, bins + 1).astype(int)
    lows = np.minimum.reduceat(audio, edges[:-1]) if audio.size else np.zeros(1)
    highs = np.maximum.reduceat(audio, edges[:-1]) if audio.size else np.zeros(1)
    times = edges[:-1] / ANALYSIS_RATE
    ax.fill_between(times, lows, highs, color=COLOURS[track.name], linewidth=0)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlim(0, duration_s)
    ax.axhline(0, color="0.6", linewidth=0.5)
    ax.set_title(f"{track.name}: waveform (peak {track.peak_db:.1f} dBFS)", fontsize=10)
    ax.set_ylabel("amplitude")


def _plot_spectrogram(
    ax: Axes,
    track: _Track,
    f0_curves: list[tuple[str, np.ndarray, np.ndarray]],
    duration_s: float,
) -> None:
    freqs, times, spectrum = stft(track.audio, fs=ANALYSIS_RATE, nperseg=1024, noverlap=768)
    keep = (freqs >= SPECTROGRAM_MIN_HZ) & (freqs <= SPECTROGRAM_MAX_HZ)
    power = np.abs(spectrum[keep]) ** 2
    # A whole song has ~10k frames: average them down to what the figure can show, or drawing
    # the mesh takes longer than the analysis.
    group = max(1, -(-power.shape[1] // SPECTROGRAM_COLUMNS))
    if group > 1:
        columns = power.shape[1] // group
        power = power[:, : columns * group].reshape(power.shape[0], columns, group).mean(axis=2)
        times = times[: columns * group].reshape(columns, group).mean(axis=1)
    power_db = 10 * np.log10(power + 1e-18)
    top = float(power_db.max()) if power_db.size else 0.0
    ax.pcolormesh(
        times, freqs[keep], power_db, shading="auto", cmap="magma", vmin=top - 80, vmax=top
    )
    for name, f0_times, f0 in f0_curves:
        # A white outline keeps the curve visible over bright harmonics and dark silence alike.
        ax.plot(
            f0_times,
            f0,
            color=COLOURS[name],
            linewidth=1.8,
            label=f"f0 of {name}",
            path_effects=[patheffects.withStroke(linewidth=3.2, foreground="white")],
        )
    if f0_curves:
        ax.legend(loc="upper right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(SPECTROGRAM_MIN_HZ, SPECTROGRAM_MAX_HZ)
    ax.set_yticks(FREQUENCY_TICKS_HZ, [f"{hz:g}" for hz in FREQUENCY_TICKS_HZ])
    ax.minorticks_off()
    ax.set_xlim(0, duration_s)
    ax.set_title(f"{track.name}: spectrogram (log frequency) with f0", fontsize=10)
    ax.set_ylabel("Hz")


def _plot_f0_comparison(ax: Axes, curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    for name, (times, f0) in curves.items():
        ax.plot(times, f0, color=COLOURS[name], linewidth=1.2, label=name)
    title = "f0"
    if ORIGINAL in curves and CONVERTED in curves:
        shift = _median_shift_semitones(curves[ORIGINAL][1], curves[CONVERTED][1])
        if shift is not None:
            title += f": converted − original = {shift:+.1f} semitones (median over voiced frames)"
    ax.set_ylabel("Hz")
    ax.set_xlabel("time (s)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)


def _median_shift_semitones(original: np.ndarray, converted: np.ndarray) -> float | None:
    length = min(original.size, converted.size)
    both = np.isfinite(original[:length]) & np.isfinite(converted[:length])
    if not both.any():
        return None
    ratio = converted[:length][both] / original[:length][both]
    return float(np.median(12 * np.log2(ratio)))


def render_report(
    original_vocals: Path | None,
    converted_vocals: Path | None,
    mix: Path | None,
    out_png: Path,
    quality: dict[str, Any] | None = None,
) -> Path:
    """Draw the report of whichever of the three files are given into ``out_png``; the
    conversion's quality figures (``track.ready``'s ``quality``) head the page when given."""
    tracks = [
        _load(name, path)
        for name, path in ((ORIGINAL, original_vocals), (CONVERTED, converted_vocals), (MIX, mix))
        if path is not None
    ]
    if not tracks:
        raise ValueError("nothing to report: no original vocals, converted vocals or mix given")

    f0_curves = {t.name: _f0(t.audio) for t in tracks if t.name in (ORIGINAL, CONVERTED)}
    rows = len(tracks) + (1 if f0_curves else 0)
    # A fixed layout (no tight_layout): the panels' sizes are known, and measuring every text
    # extent to lay them out cost as much as drawing the whole figure.
    figure = Figure(figsize=(16, 3.2 * rows))
    FigureCanvasAgg(figure)
    if quality:
        figure.suptitle(quality_caption(quality), fontsize=10, y=1 - 0.08 / (3.2 * rows))
    figure.subplots_adjust(
        left=0.05,
        right=0.99,
        top=1 - (0.6 if quality else 0.35) / (3.2 * rows),
        bottom=0.6 / (3.2 * rows),
        hspace=0.45,
    )
    axes = figure.subplots(rows, 2, squeeze=False, gridspec_kw={"width_ratios": [1, 1.4]})
    # One time axis for every panel, so a moment lines up down the page.
    duration_s = max(t.duration_s for t in tracks)
    for row, track in enumerate(tracks):
        # The mix gets the converted melody drawn over it: its own f0 would be the accompaniment's.
        overlay_name = track.name if track.name != MIX else CONVERTED
        overlay = [(overlay_name, *f0_curves[overlay_name])] if overlay_name in f0_curves else []
        _plot_waveform(axes[row][0], track, duration_s)
        _plot_spectrogram(axes[row][1], track, overlay, duration_s)
    if f0_curves:
        comparison = figure.add_subplot(rows, 1, rows)
        axes[rows - 1][0].remove()
        axes[rows - 1][1].remove()
        _plot_f0_comparison(comparison, f0_curves)
        comparison.set_xlim(0, duration_s)
    for ax in axes[len(tracks) - 1]:
        ax.set_xlabel("time (s)")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=90)
    log.info("report rendered", path=str(out_png), tracks=[t.name for t in tracks])
    return out_png


def quality_caption(quality: dict[str, Any]) -> str:
    """One line of the quality report for the page head."""

    def shown(name: str, fmt: str) -> str:
        value = quality.get(name)
        return "n/a" if value is None else format(value, fmt)

    return (
        f"similarity to the voice {shown('speaker_similarity', '.2f')} "
        f"(source vocals {shown('source_similarity', '.2f')})  ·  "
        f"f0 error {shown('f0_error_cents', '.0f')} cents  ·  "
        f"voiced frames kept {shown('voiced_kept', '.0%')}  ·  "
        f"key {int(quality.get('key_semitones', 0)):+d} ({quality.get('key_method', 'requested')})"
        + ("  ·  backing vocals converted" if quality.get("backing_converted") else "")
    )


def _latest_job_event(store: ObjectStore, job_id: str) -> dict[str, Any]:
    try:
        return dict(get_json(store, job_event_key(job_id, "track.ready")))
    except ObjectNotFound:
        pass
    events = []
    for key in store.list(job_prefix(job_id)):
        if key.endswith(".json"):
            try:
                events.append(dict(get_json(store, key)))
            except (ObjectNotFound, json.JSONDecodeError):
                continue
    if not events:
        raise LookupError(f"job {job_id!r} has no recorded events under {job_prefix(job_id)}")
    # ISO-8601 UTC timestamps sort as text.
    return max(events, key=lambda event: str(event.get("occurred_at", "")))


def report_for_job(store: ObjectStore, job_id: str, out_png: Path) -> Path:
    """Render the report of a job from the keys its latest recorded event carries."""
    event = _latest_job_event(store, job_id)
    keys: dict[str, str | None] = event.get("keys") or {}
    wanted = {"original": keys.get("vocals"), "converted": keys.get("converted_vocals")}
    wanted["mix"] = keys.get("track")
    with tempfile.TemporaryDirectory(prefix="singtome-report-") as tmp:
        local: dict[str, Path | None] = {}
        for role, key in wanted.items():
            local[role] = (
                store.get_file(key, Path(tmp) / f"{role}{Path(key).suffix}") if key else None
            )
        return render_report(
            local["original"], local["converted"], local["mix"], out_png, event.get("quality")
        )
