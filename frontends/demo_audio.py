"""Demo and test audio made on the spot: sung vocals with a known pitch, speech, a band, mixes.

Everything is deterministic for a given seed and needs no downloads. The best available tools are
used (espeak-ng for words, pyworld to put them on a melody, fluidsynth with the General MIDI sound
font for the band); when one is missing a plain numpy synth stands in, so tests still run.

Conventions: mono audio is a 1-D ``float32`` array, stereo is ``(samples, 2)`` ``float32``; the
pitch track returned by :func:`sung_vocal` has one value per :data:`F0_HOP_S` seconds, in Hz, 0 for
unvoiced frames.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import lfilter

from foundation.levels import fit_length
from foundation.resample import resample

F0_HOP_S = 0.005
"""Frame period of the f0 tracks returned here (5 ms, WORLD's default)."""

SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")

# A minor pentatonic around A3, a comfortable singing range for either voice.
_DEFAULT_SCALE_HZ = (196.0, 220.0, 261.63, 293.66, 329.63, 392.0, 440.0)

_WORDS = [
    "love",
    "night",
    "light",
    "heart",
    "fire",
    "sky",
    "rain",
    "home",
    "dream",
    "day",
    "way",
    "stay",
    "alone",
    "forever",
    "shine",
    "river",
    "golden",
    "morning",
    "ocean",
    "fly",
    "away",
    "only",
    "you",
    "and",
    "me",
    "tonight",
    "over",
    "the",
    "sea",
]

_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore every summer morning.",
    "A gentle breeze carried the scent of rain across the quiet valley.",
    "Please call me back when you have finished reading the letter.",
    "Bright lights flickered over the harbour as the ships came home.",
    "We walked along the river and talked about music until sunset.",
)


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def db_to_gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def rms_dbfs(audio: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    return 20.0 * np.log10(max(rms, 1e-12))


def _normalise_peak(audio: np.ndarray, peak: float) -> np.ndarray:
    top = float(np.max(np.abs(audio))) if audio.size else 0.0
    return (audio * (peak / top)).astype(np.float32) if top > 0 else audio.astype(np.float32)


def has_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def has_fluidsynth() -> bool:
    return shutil.which("fluidsynth") is not None and SOUNDFONT.is_file()


def _has_pyworld() -> bool:
    try:
        import pyworld  # noqa: F401
    except ImportError:
        return False
    return True


def espeak(
    text: str, voice: str = "en", pitch: int = 50, speed: int = 150
) -> tuple[np.ndarray, int]:
    """espeak-ng's rendering of ``text`` as (mono float32, sample rate)."""
    result = subprocess.run(
        ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "--stdout", text],
        check=True,
        capture_output=True,
    )
    data = result.stdout
    try:
        audio, sr = sf.read(io.BytesIO(data), dtype="float32")
    except sf.LibsndfileError:
        # espeak-ng streams a WAV header with an unknown length; read the 16-bit PCM behind it.
        sr = int.from_bytes(data[24:28], "little")
        audio = np.frombuffer(data[44 : 44 + (len(data) - 44) // 2 * 2], dtype="<i2") / 32768.0
    return np.asarray(audio, dtype=np.float32), int(sr)


# --------------------------------------------------------------------------------------------------
# Vocals
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Melody:
    """Per-frame target pitch (Hz) at :data:`F0_HOP_S`, built from notes of equal length."""

    f0: np.ndarray

    @classmethod
    def from_notes(
        cls, notes_hz: list[float], frames: int, note_s: float, vibrato_cents: float = 0.0
    ) -> Melody:
        times = np.arange(frames) * F0_HOP_S
        index = (times // note_s).astype(int) % len(notes_hz)
        f0 = np.asarray(notes_hz, dtype=np.float64)[index]
        if vibrato_cents:
            f0 = f0 * 2.0 ** (vibrato_cents / 1200.0 * np.sin(2 * np.pi * 5.5 * times))
        return cls(f0=f0)


def _melody_notes(
    notes_hz: list[float] | None, duration_s: float, note_s: float, seed: int
) -> list[float]:
    if notes_hz:
        return [float(n) for n in notes_hz]
    rng = np.random.default_rng(seed)
    count = max(1, int(np.ceil(duration_s / note_s)))
    # A random walk on the scale sounds more like a tune than independent picks.
    steps = np.clip(np.cumsum(rng.integers(-2, 3, size=count)) + 3, 0, len(_DEFAULT_SCALE_HZ) - 1)
    return [_DEFAULT_SCALE_HZ[int(i)] for i in steps]


def sung_vocal(
    duration_s: float,
    sr: int = 44100,
    notes_hz: list[float] | None = None,
    seed: int = 0,
    voice: str = "en+f2",
    note_s: float = 0.4,
    vibrato_cents: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A singing-like voice of ``duration_s`` seconds and the f0 it was made to have.

    Words spoken by espeak-ng are stretched in time and re-pitched with WORLD onto the melody
    (``notes_hz`` cycled, ``note_s`` seconds each; a seeded random tune when None). Without
    espeak-ng or pyworld, a glottal-pulse source through vowel formants is used instead.
    Returns ``(audio, f0_track)``: mono float32 at ``sr`` (peak 0.5), and Hz per 5 ms frame with 0
    where the voice is unvoiced.
    """
    frames = round(duration_s / F0_HOP_S)
    melody = Melody.from_notes(
        _melody_notes(notes_hz, duration_s, note_s, seed), frames, note_s, vibrato_cents
    )
    if has_espeak() and _has_pyworld():
        audio, f0 = _world_sung(duration_s, sr, melody, seed, voice)
    else:
        audio, f0 = _pulse_sung(duration_s, sr, melody, seed)
    return _normalise_peak(fit_length(audio, round(duration_s * sr)), 0.5), f0


# A high melody (A4 to A5, median near 700 Hz): a soprano line an octave above a tenor's.
HIGH_SCALE_HZ = (440.0, 493.88, 523.25, 587.33, 659.26, 698.46, 783.99, 880.0)


@dataclass(frozen=True)
class ParallelPair:
    """The same words and melody sung by two voices, the target ``octaves`` below the source.

    ``target`` is what a perfect conversion of ``source`` into the target voice (at the
    automatic key) would sound like; ``dataset`` holds other takes of the target voice (other
    words and tunes in its range) to learn the voice from. Pitch tracks are Hz per 5 ms.
    """

    source: np.ndarray
    source_f0: np.ndarray
    target: np.ndarray
    target_f0: np.ndarray
    dataset: list[np.ndarray]
    sr: int
    octaves: int


def parallel_pair(
    duration_s: float,
    sr: int = 44100,
    seed: int = 0,
    source_voice: str = "en+f2",
    target_voice: str = "en+m3",
    octaves: int = 1,
    dataset_takes: int = 4,
    take_s: float = 8.0,
) -> ParallelPair:
    """A source vocal, its parallel rendition in another voice ``octaves`` lower, and a
    dataset of that other voice (see :class:`ParallelPair`)."""
    notes = _melody_notes(None, duration_s, 0.4, seed)
    high = [HIGH_SCALE_HZ[_DEFAULT_SCALE_HZ.index(n)] for n in notes]
    low = [n / 2**octaves for n in high]
    source, source_f0 = sung_vocal(duration_s, sr, high, seed, source_voice)
    target, target_f0 = sung_vocal(duration_s, sr, low, seed, target_voice)
    # The takes sing other words to the song's notes in other orders: the voice's range is the
    # target rendition's (an octave below the source), as a singer's own recordings would be.
    rng = np.random.default_rng(seed + 100)
    dataset = []
    for take in range(dataset_takes):
        tune = [float(n) for n in rng.permutation(low)]
        dataset.append(sung_vocal(take_s, sr, tune, seed + 101 + take, target_voice)[0])
    return ParallelPair(source, source_f0, target, target_f0, dataset, sr, octaves)


def _world_sung(
    duration_s: float, sr: int, melody: Melody, seed: int, voice: str
) -> tuple[np.ndarray, np.ndarray]:
    import pyworld

    from agents.voice.f0.world_f0 import world_f0

    rng = np.random.default_rng(seed)
    # Roughly one word per 0.6 s of song: the speech gets stretched ~2x, like sustained singing.
    words = [str(w) for w in rng.choice(_WORDS, size=max(2, int(duration_s / 0.6) + 1))]
    speech, speech_sr = espeak(" ".join(words), voice=voice, speed=140)
    speech = speech.astype(np.float64)
    # pyworld's own default f0 range (71-800 Hz) for the spoken words.
    f0, times = world_f0(
        speech, speech_sr, "dio", f0_floor=71.0, f0_ceil=800.0, frame_period_ms=F0_HOP_S * 1000
    )
    envelope = pyworld.cheaptrick(speech, f0, times, speech_sr)
    aperiodicity = pyworld.d4c(speech, f0, times, speech_sr)

    # Stretch the frame sequence onto the song length (nearest frame), keep the voicing pattern.
    frames = len(melody.f0)
    source = np.minimum(np.round(np.linspace(0, len(f0) - 1, frames)).astype(int), len(f0) - 1)
    voiced = f0[source] > 0
    target_f0 = np.where(voiced, melody.f0, 0.0)
    sung = pyworld.synthesize(
        target_f0,
        np.ascontiguousarray(envelope[source]),
        np.ascontiguousarray(aperiodicity[source]),
        speech_sr,
        frame_period=F0_HOP_S * 1000,
    )
    return resample(sung, speech_sr, sr), target_f0


# Vowel formants (Hz) for the fallback synth: a, e, i, o, u.
_VOWELS = (
    (800, 1150, 2900),
    (400, 1600, 2700),
    (350, 2300, 3000),
    (450, 800, 2830),
    (325, 700, 2530),
)


def _resonator(audio: np.ndarray, freq: float, bandwidth: float, sr: int) -> np.ndarray:
    radius = np.exp(-np.pi * bandwidth / sr)
    theta = 2 * np.pi * freq / sr
    a = [1.0, -2 * radius * np.cos(theta), radius**2]
    return lfilter([1.0 - radius], a, audio)


def _pulse_sung(
    duration_s: float, sr: int, melody: Melody, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    samples = round(duration_s * sr)
    hop = F0_HOP_S * sr
    frame_of_sample = np.minimum((np.arange(samples) / hop).astype(int), len(melody.f0) - 1)
    # Short breaths between notes make an unvoiced pattern the pitch tests can check.
    note_frames = max(1, round(0.4 / F0_HOP_S))
    gap = (np.arange(len(melody.f0)) % note_frames) >= note_frames - 8
    f0 = np.where(gap, 0.0, melody.f0)
    inst_f0 = f0[frame_of_sample]
    phase = np.cumsum(inst_f0 / sr)
    # Rosenberg-like glottal pulse: a sawtooth with a rounded top, rich in harmonics.
    frac = phase % 1.0
    pulse = np.where(
        frac < 0.6, 0.5 * (1 - np.cos(np.pi * frac / 0.6)), np.cos(np.pi * (frac - 0.6) / 0.8)
    )
    source = np.where(inst_f0 > 0, pulse - pulse.mean(), 0.0) + 0.01 * rng.standard_normal(samples)
    vowel_len = int(0.4 * sr)
    out = np.zeros(samples)
    for start in range(0, samples, vowel_len):
        part = source[start : start + vowel_len]
        formants = _VOWELS[int(rng.integers(len(_VOWELS)))]
        out[start : start + len(part)] = sum(
            _resonator(part, f, 80.0 + 0.05 * f, sr) for f in formants
        )
    return out.astype(np.float32), f0


def speech_voice(
    duration_s: float,
    sr: int = 44100,
    voice: str = "en",
    pitch: int = 50,
    seed: int = 0,
    speed: int = 160,
) -> np.ndarray:
    """Speech of ``duration_s`` seconds from espeak-ng, mono float32 at ``sr`` (peak 0.5).

    Different speakers come from espeak variants (``'en+m3'``, ``'en+f2'``, ``'en-us+m1'`` ...)
    and ``pitch`` (0-99). Sentences are picked by ``seed`` and repeated to fill the duration.
    Without espeak-ng, the formant synth speaks (monotone) at a pitch derived from ``pitch``.
    """
    samples = round(duration_s * sr)
    if not has_espeak():
        base = 90.0 + 2.0 * pitch
        frames = round(duration_s / F0_HOP_S)
        melody = Melody(f0=np.full(frames, base) * (1 + 0.05 * np.sin(np.arange(frames) * 0.02)))
        audio, _ = _pulse_sung(duration_s, sr, melody, seed)
        return _normalise_peak(fit_length(audio, samples), 0.5)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(_SENTENCES))
    pieces: list[np.ndarray] = []
    total = 0
    i = 0
    while total < samples:
        speech, speech_sr = espeak(_SENTENCES[order[i % len(order)]], voice, pitch, speed)
        piece = resample(speech, speech_sr, sr)
        pieces.append(piece)
        total += len(piece)
        i += 1
    return _normalise_peak(fit_length(np.concatenate(pieces), samples), 0.5)


# --------------------------------------------------------------------------------------------------
# Accompaniment
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Note:
    start: float
    end: float
    pitch: int
    velocity: int
    part: str  # 'chords', 'bass' or 'drums'


# General MIDI: program per part and pan (0 left .. 127 right) so the render is truly stereo.
_PARTS = {"chords": (0, 40), "bass": (33, 64), "pad": (48, 90)}
_PROGRESSIONS = (
    ((57, 60, 64), (53, 57, 60), (48, 52, 55), (55, 59, 62)),  # Am F C G
    ((48, 52, 55), (55, 59, 62), (57, 60, 64), (53, 57, 60)),  # C G Am F
)


def _compose(duration_s: float, seed: int, tempo: float) -> list[Note]:
    rng = np.random.default_rng(seed)
    beat = 60.0 / tempo
    bar = 4 * beat
    progression = _PROGRESSIONS[int(rng.integers(len(_PROGRESSIONS)))]
    notes: list[Note] = []
    bars = int(np.ceil(duration_s / bar))
    for b in range(bars):
        chord = progression[b % len(progression)]
        t0 = b * bar
        for pitch in chord:
            notes.append(Note(t0, t0 + bar * 0.95, pitch, 70, "pad"))
        for k in range(4):  # piano stabs on each beat
            for pitch in chord:
                notes.append(
                    Note(
                        t0 + k * beat,
                        t0 + (k + 0.5) * beat,
                        pitch + 12,
                        60 + int(rng.integers(20)),
                        "chords",
                    )
                )
        for k in range(4):  # bass on the root, an octave below the chord
            notes.append(Note(t0 + k * beat, t0 + (k + 0.9) * beat, chord[0] - 24, 90, "bass"))
        for k in range(8):  # drums: kick on 1 and 3, snare on 2 and 4, eighth-note hi-hat
            t = t0 + k * beat / 2
            notes.append(Note(t, t + 0.1, 42, 60 + int(rng.integers(20)), "drums"))
            if k in (0, 4):
                notes.append(Note(t, t + 0.1, 36, 110, "drums"))
            if k in (2, 6):
                notes.append(Note(t, t + 0.1, 38, 100, "drums"))
    return [n for n in notes if n.start < duration_s]


def _render_fluidsynth(notes: list[Note], duration_s: float, sr: int) -> np.ndarray:
    import pretty_midi

    midi = pretty_midi.PrettyMIDI()
    for part, (program, pan) in _PARTS.items():
        instrument = pretty_midi.Instrument(program=program, name=part)
        instrument.control_changes.append(pretty_midi.ControlChange(10, pan, 0.0))
        instrument.notes = [
            pretty_midi.Note(n.velocity, n.pitch, n.start, n.end) for n in notes if n.part == part
        ]
        midi.instruments.append(instrument)
    drums = pretty_midi.Instrument(program=0, is_drum=True, name="drums")
    drums.notes = [
        pretty_midi.Note(n.velocity, n.pitch, n.start, n.end) for n in notes if n.part == "drums"
    ]
    midi.instruments.append(drums)
    with tempfile.TemporaryDirectory() as tmp:
        mid, wav = Path(tmp) / "band.mid", Path(tmp) / "band.wav"
        midi.write(str(mid))
        subprocess.run(
            [
                "fluidsynth",
                "-ni",
                "-q",
                "-g",
                "0.6",
                "-r",
                str(sr),
                "-F",
                str(wav),
                str(SOUNDFONT),
                str(mid),
            ],
            check=True,
            capture_output=True,
        )
        audio, _ = sf.read(wav, dtype="float32", always_2d=True)
    return audio


def _render_additive(notes: list[Note], duration_s: float, sr: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    samples = round(duration_s * sr) + sr
    out = np.zeros((samples, 2))
    pans = {"chords": 0.3, "pad": 0.7, "bass": 0.5, "drums": 0.5}
    for n in notes:
        start = int(n.start * sr)
        length = int((n.end - n.start) * sr)
        t = np.arange(length) / sr
        gain = n.velocity / 127.0
        if n.part == "drums":
            if n.pitch == 36:
                tone = np.sin(2 * np.pi * (60 + 80 * np.exp(-t * 30)) * t) * np.exp(-t * 20)
            else:
                decay = 40 if n.pitch == 42 else 15
                tone = (
                    rng.standard_normal(length)
                    * np.exp(-t * decay)
                    * (0.3 if n.pitch == 42 else 0.6)
                )
        else:
            freq = 440.0 * 2 ** ((n.pitch - 69) / 12)
            tone = sum(np.sin(2 * np.pi * freq * h * t) / h for h in range(1, 6))
            tone = tone * np.minimum(1.0, t * 50) * np.exp(-t * (1.5 if n.part == "pad" else 4))
        pan = pans[n.part]
        end = min(samples, start + length)
        out[start:end, 0] += 0.15 * gain * tone[: end - start] * (1 - pan)
        out[start:end, 1] += 0.15 * gain * tone[: end - start] * pan
    return out.astype(np.float32)


def accompaniment(
    duration_s: float, sr: int = 44100, seed: int = 0, tempo: float = 100.0
) -> np.ndarray:
    """A stereo band (chords, pad, bass, drums), ``(samples, 2)`` float32 with peak 0.5.

    Rendered by fluidsynth with the FluidR3 General MIDI sound font from a pretty_midi score; an
    additive synth stands in when fluidsynth, the sound font or pretty_midi is missing.
    """
    notes = _compose(duration_s, seed, tempo)
    audio: np.ndarray | None = None
    if has_fluidsynth():
        try:
            audio = _render_fluidsynth(notes, duration_s, sr)
        except (ImportError, subprocess.CalledProcessError):
            audio = None
    if audio is None:
        audio = _render_additive(notes, duration_s, sr, seed)
    return _normalise_peak(fit_length(audio, round(duration_s * sr)), 0.5)


# --------------------------------------------------------------------------------------------------
# Mixing and files
# --------------------------------------------------------------------------------------------------


def as_stereo(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        return np.stack([audio, audio], axis=1)
    if audio.shape[1] == 1:
        return np.repeat(audio, 2, axis=1)
    return audio[:, :2]


def mix(vocal: np.ndarray, accompaniment: np.ndarray, vocal_gain_db: float = 0.0) -> np.ndarray:
    """Vocal (mono or stereo) at ``vocal_gain_db`` over the accompaniment, stereo float32.

    The shorter input is zero-padded. If the sum would clip, the whole mix is scaled down (the
    vocal-to-accompaniment ratio is kept, which is what separation metrics look at).
    """
    vocal = as_stereo(vocal) * db_to_gain(vocal_gain_db)
    band = as_stereo(accompaniment)
    length = max(len(vocal), len(band))
    out = fit_length(vocal, length) + fit_length(band, length)
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    if peak > 0.99:
        out = out * (0.99 / peak)
    return out.astype(np.float32)


def write(path: str | Path, audio: np.ndarray, sr: int = 44100, subtype: str | None = None) -> Path:
    """Write audio with soundfile; the format follows the suffix (.wav, .flac, .ogg)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.asarray(audio, dtype=np.float32), sr, subtype=subtype)
    return path


def encode_with_ffmpeg(source: str | Path, target: str | Path, *args: str) -> Path:
    """Re-encode ``source`` to ``target`` with ffmpeg (format from the suffix, extra ``args``)."""
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(source), *args, str(target)],
        check=True,
        capture_output=True,
    )
    return Path(target)
