"""Conversion quality on generated parallel pairs: the WORLD fallback, RVC, and a plain pitch shift.

    python bench/quality.py [--pairs 2] [--duration 10] [--seed 0]
    SINGTOME_HUBERT_PATH=hubert_base.pt python bench/quality.py --rvc-model voice.pth \
        [--rvc-index voice.index]

Each pair is the same words and melody sung by two espeak-ng voices re-pitched with WORLD
(``frontends.demo_audio.parallel_pair``): a source (``en+f2``, A4-A5, median near 700 Hz) and its
parallel rendition by the target voice (``en+m3``) an octave lower, plus 32 s of other takes of
the target voice as its dataset. The fallback learns a profile from the dataset (as the trainer
does) and converts the source at the automatic key; the baseline shifts the source by the same
key with a plain pitch shifter (pedalboard) and changes nothing else.

Figures per method (medians over pairs, and each pair):

* ``key``: semitones applied (the truth is ``-12 * octaves``);
* ``f0_error_cents``: median |cents| between the output's pitch and the target's true melody;
* ``f0_error_vs_source_cents``: the same against the source moved by the applied key (the figure
  the job's quality report gives);
* ``voiced``: share of the source's sung frames (voiced by FCPE, within 35 dB of the loudest)
  voiced in the output; ``voiced_vs_truth`` against the generator's own voicing (which counts
  breathy frames no tracker calls voiced);
* ``similarity``: Resemblyzer cosine similarity to the target voice's dataset (``source`` and
  ``target`` give the floor and the ceiling);
* ``band_8_12k_db``: the output's 8-12 kHz level (relative to its whole spectrum) minus the
  target rendition's.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SR = 44100
HIGH_BAND_HZ = (8000.0, 12000.0)


def _truth_on_10ms(f0_5ms: np.ndarray, frames: int) -> np.ndarray:
    """A generator's 5 ms pitch track on the 10 ms analysis grid (every other frame)."""
    track = np.asarray(f0_5ms)[::2]
    return np.pad(track, (0, max(0, frames - len(track))))[:frames]


def figures(
    output: np.ndarray, pair: Any, key: int, voice_embedding: np.ndarray
) -> dict[str, float | None]:
    from agents.voice import quality

    heard = quality.pitch(output, SR)
    truth_target = _truth_on_10ms(pair.target_f0, len(heard))
    truth_source = _truth_on_10ms(pair.source_f0, len(heard))
    source_heard = quality.pitch(pair.source, SR)
    return {
        "key": key,
        "f0_error_cents": quality.f0_error_cents(heard, truth_target, 0.0),
        "f0_error_vs_source_cents": quality.f0_error_cents(heard, source_heard, key),
        "voiced": quality.voiced_kept(heard, source_heard),
        "voiced_vs_truth": quality.voiced_kept(heard, truth_source),
        "similarity": quality.similarity(
            quality.speaker_embedding([(output, SR)]), voice_embedding
        ),
        "band_8_12k_db": quality.band_level_db(output, SR, HIGH_BAND_HZ)
        - quality.band_level_db(pair.target, SR, HIGH_BAND_HZ),
    }


def pitch_shift(audio: np.ndarray, semitones: int) -> np.ndarray:
    import pedalboard

    board = pedalboard.Pedalboard([pedalboard.PitchShift(semitones=float(semitones))])
    return np.asarray(board(audio.astype(np.float32), SR), dtype=np.float32)


def run_pair(index: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from agents.trainer.profile import learn_profile
    from agents.voice import quality, world
    from frontends.demo_audio import parallel_pair, write

    pair = parallel_pair(args.duration, SR, seed=args.seed + index)
    files = [
        write(folder / f"pair{index}-take{n}.wav", take, SR) for n, take in enumerate(pair.dataset)
    ]
    voice_embedding = quality.speaker_embedding([(take, SR) for take in pair.dataset])
    result: dict[str, Any] = {
        "seed": args.seed + index,
        "true_key": -12 * pair.octaves,
        "similarity_floor_source": quality.similarity(
            quality.speaker_embedding([(pair.source, SR)]), voice_embedding
        ),
        "similarity_ceiling_target": quality.similarity(
            quality.speaker_embedding([(pair.target, SR)]), voice_embedding
        ),
    }
    started = time.process_time()
    profile = learn_profile(files)
    converted, report = world.convert_world_with_report(pair.source, SR, profile)
    result["world"] = figures(converted, pair, report.semitones, voice_embedding)
    result["world"]["key_method"] = report.key_method
    result["world"]["cpu_s"] = round(time.process_time() - started, 1)
    result["pitch_shift"] = figures(
        pitch_shift(pair.source, report.semitones), pair, report.semitones, voice_embedding
    )
    if args.rvc_model:
        result["rvc"] = run_rvc(pair, args, folder / f"pair{index}-source.wav", voice_embedding)
    return result


def run_rvc(pair: Any, args: argparse.Namespace, source_path: Path, embedding: Any) -> Any:
    from agents.converter.stage import convert_vocals
    from frontends.demo_audio import write
    from schemas.events import ConversionOptions
    from streams.settings import get_settings

    settings = get_settings()
    if settings.models.hubert_path is None:
        return {"skipped": "no content encoder configured (SINGTOME_HUBERT_PATH)"}
    write(source_path, pair.source, SR)
    files = [Path(args.rvc_model)] + ([Path(args.rvc_index)] if args.rvc_index else [])
    key = -12 * pair.octaves
    result = convert_vocals(
        source_path, files, ConversionOptions(f0_up_key=key), settings.converter,
        out_path=source_path.with_name("rvc.flac"), models=settings.models, audio=settings.audio,
    )  # fmt: skip
    import soundfile as sf

    audio, sr = sf.read(str(result.path), dtype="float32")
    from foundation.resample import resample

    return figures(resample(audio, sr, SR) if sr != SR else audio, pair, key, embedding)


def summary(pairs: list[dict[str, Any]], method: str) -> dict[str, float | None]:
    rows = [p[method] for p in pairs if method in p and "skipped" not in p[method]]
    if not rows:
        return {}
    out: dict[str, float | None] = {}
    for name in rows[0]:
        values = [r[name] for r in rows if isinstance(r.get(name), int | float)]
        out[name] = round(statistics.median(values), 3) if values else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rvc-model", default=None, help="an RVC .pth of the target voice")
    parser.add_argument("--rvc-index", default=None)
    args = parser.parse_args()
    from foundation.logging import configure_logging

    configure_logging("WARNING", "console")
    with tempfile.TemporaryDirectory(prefix="singtome-quality-") as tmp:
        pairs = [run_pair(i, args, Path(tmp)) for i in range(args.pairs)]
    methods = ["world", "pitch_shift"] + (["rvc"] if args.rvc_model else [])
    print(
        json.dumps(
            {
                "pairs": args.pairs,
                "duration_s": args.duration,
                "median": {m: summary(pairs, m) for m in methods},
                "per_pair": pairs,
            },
            indent=2,
            default=lambda v: round(float(v), 3),
        )
    )


if __name__ == "__main__":
    main()
