"""`singtome demo`: a real cover, end to end, through Kafka and S3 on this machine.

First pulls the RVC model files (content encoder, RMVPE, the 40k pretrained pair) when it can,
within a bounded time and with a progress bar; with the content encoder in place the cover is an
RVC cover, otherwise the labelled WORLD fallback, and one line says why. Then starts the local
stack (unless it is already up), one worker process per stage, generates a short song (a sung
melody over a General-MIDI band) and a voice dataset of another voice (espeak-ng), submits the
job, shows each stage's progress, and prints where the track is and the ``track.ready`` event.
Everything it started is stopped on exit or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from agents.registry import STAGE_NAMES
from foundation.logging import get_logger
from frontends.stack import StackConfig, status, up
from schemas.events import JobOptions, TrackFailed, TrackReady
from streams.settings import Settings

log = get_logger(__name__)

SR = 44100
# On the CPU a full-size RVC step takes minutes (bench/train.py): the demo trains this many epochs
# from the pretrained weights there, the job's default on a GPU.
CPU_DEMO_EPOCHS = 2

DownloadProgress = Callable[[], AbstractContextManager[Callable[[Any, int, int | None], None]]]


def pull_voice_models(
    settings: Settings, progress: DownloadProgress | None, timeout_s: float
) -> tuple[Settings, str]:
    """Pull the RVC essentials within ``timeout_s`` (the content encoder first: without it the
    rest is of no use); returns the settings with whatever arrived and one line saying which
    voice backend the demo will use, and why."""
    import contextlib
    import time

    from streams.models.manager import RVC_ESSENTIALS, pull_models, select

    encoder, *extras = select(settings, RVC_ESSENTIALS)
    deadline = time.monotonic() + timeout_s
    with progress() if progress else contextlib.nullcontext() as show:
        first = pull_models(settings, [encoder], show, timeout_s)
        rest = (
            pull_models(settings, extras, show, max(deadline - time.monotonic(), 0.0))
            if first.ok
            else None
        )
    # Validated again, the model settings fill what arrived into the paths still unset.
    models = type(settings.models).model_validate(settings.models.model_dump())
    settings = settings.model_copy(update={"models": models})
    if settings.models.hubert_path is None:
        why = first.failed[0].message if first.failed else "no content encoder"
        return settings, f"voice: the WORLD fallback, not RVC ({why})"
    line = f"voice: RVC (content encoder {settings.models.hubert_path})"
    if rest is not None and rest.failed:
        missing = ", ".join(f.entry.name for f in rest.failed)
        line += f"; not fetched: {missing} ({rest.failed[0].message})"
    return settings, line


def make_demo_inputs(
    folder: Path,
    seconds: float = 8.0,
    *,
    voice: str = "en+m3",
    takes: int = 3,
    take_s: float = 8.0,
    seed: int = 7,
    song_name: str = "song.wav",
) -> tuple[Path, Path]:
    """Write a song (a sung melody over a band) and ``voice/take*.wav`` (speech of another voice,
    espeak-ng's ``voice``) into ``folder``, unless already there; returns both paths."""
    import soundfile as sf

    from frontends import demo_audio

    song = folder / song_name
    voice_dir = folder / "voice"
    if song.exists() and len(list(voice_dir.glob("*.wav"))) >= takes:
        return song, voice_dir
    voice_dir.mkdir(parents=True, exist_ok=True)
    vocal, _ = demo_audio.sung_vocal(seconds, sr=SR, seed=seed)
    band = demo_audio.accompaniment(seconds, sr=SR, seed=seed)
    sf.write(song, demo_audio.mix(vocal, band, -2.0), SR)
    for take in range(takes):
        speech = demo_audio.speech_voice(take_s, SR, voice=voice, seed=take)
        sf.write(voice_dir / f"take{take}.wav", speech, SR)
    return song, voice_dir


@contextlib.contextmanager
def running_stack(cfg: StackConfig, partitions: int) -> Iterator[bool]:
    """The local stack, started if needed; yields whether this call started it (and stops it)."""
    from frontends.stack import down

    state = status(cfg)
    already = bool(state["broker"]["listening"]) and bool(state["s3"]["healthy"])  # type: ignore[index]
    up(cfg, partitions=partitions)
    try:
        yield not already
    finally:
        if not already:
            down(cfg)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def stage_workers(env: dict[str, str], log_dir: Path, timeout_s: float = 180) -> Iterator[None]:
    """One `singtome worker` process per stage; waits until each is consuming."""
    from streams.ports import free_port

    log_dir.mkdir(parents=True, exist_ok=True)
    singtome = str(Path(sys.executable).with_name("singtome"))
    procs: list[tuple[str, subprocess.Popen[bytes], int]] = []
    try:
        for stage in STAGE_NAMES:
            port = free_port()
            with open(log_dir / f"{stage}.log", "ab") as out:
                proc = subprocess.Popen(
                    [singtome, "worker", stage],
                    env={
                        **env,
                        "SINGTOME_HEALTH_PORT": str(port),
                        "SINGTOME_HEALTH_HOST": "127.0.0.1",
                    },
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            procs.append((stage, proc, port))
        deadline = time.monotonic() + timeout_s
        for stage, proc, port in procs:
            while not _healthy(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = (log_dir / f"{stage}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"the {stage} worker did not start; its log ends:\n{tail}")
                time.sleep(0.5)
        yield
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for _, proc, _ in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def run_demo(
    settings: Settings,
    cfg: StackConfig,
    out_dir: Path,
    follow: Callable[[object, str, float], TrackReady | TrackFailed],
    say: Callable[[str], None],
    timeout_s: float = 1800,
    *,
    pull: bool = True,
    pull_timeout_s: float = 600,
    download_progress: DownloadProgress | None = None,
    epochs: int | None = None,
) -> TrackReady | TrackFailed:
    """Run the demo; returns the job's last event. ``follow(store, job_id, timeout)`` shows it."""
    from foundation.device import resolve_device
    from streams.client import VoiceSource, submit_job
    from streams.store import S3Store

    if pull:
        settings, voice_line = pull_voice_models(settings, download_progress, pull_timeout_s)
    elif settings.models.hubert_path is None:
        voice_line = "voice: the WORLD fallback, not RVC (no content encoder; pulling skipped)"
    else:
        voice_line = f"voice: RVC (content encoder {settings.models.hubert_path})"
    say(voice_line)
    on_cpu = (
        settings.models.hubert_path is not None
        and resolve_device(settings.models.device).type == "cpu"
    )
    if epochs is None and on_cpu:
        epochs = CPU_DEMO_EPOCHS
        say(f"RVC on the CPU: training {epochs} epochs from the pretrained weights (minutes)")

    env = {**os.environ, **cfg.env(), "SINGTOME_TOPIC_PREFIX": settings.broker.topic_prefix}
    os.environ.update(cfg.env())
    settings = settings.updated(broker={"url": cfg.broker_url}, storage={"bucket": cfg.bucket})
    with running_stack(cfg, settings.broker.topic_partitions) as started:
        how = "started" if started else "already up"
        say(f"stack: broker {cfg.bootstrap}, S3 {cfg.s3_endpoint} ({how})")
        from streams.admin import create_topics

        create_topics(settings)
        song, voice = make_demo_inputs(out_dir / "inputs")
        say(f"demo song {song}, voice dataset {voice}")
        with stage_workers(env, cfg.root / "logs"):
            say(f"4 workers consuming (logs in {cfg.root / 'logs'})")
            store = S3Store(settings)
            options = JobOptions()
            options.output.title = "singtome demo"
            options.output.format = "mp3"
            if epochs is not None:
                options.voice.epochs = epochs
            event = submit_job(
                settings, store, song, voice=VoiceSource(dataset=voice), options=options
            )
            say(f"job {event.job_id} submitted")
            result = follow(store, event.job_id, timeout_s)
            if isinstance(result, TrackReady):
                local = out_dir / f"cover-{event.job_id}.mp3"
                store.get_file(result.track_key, local)
                say(f"track: s3://{settings.storage.bucket}/{result.track_key}")
                say(f"copied to {local.resolve()}")
            return result
