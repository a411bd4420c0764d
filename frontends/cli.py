"""`singtome` — the command line. Commands only parse arguments and call into the packages."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError

from agents.registry import STAGE_NAMES
from frontends.cli_models import doctor, models_app
from schemas.events import ConversionOptions, OutputOptions, TrackReady, VoiceOptions
from schemas.vocabulary import F0Method, OutputFormat, SampleRate
from streams.settings import CACHE_HOME, Settings, get_settings

if TYPE_CHECKING:
    from streams.client import VoiceSource

app = typer.Typer(
    help="singtome: song covers in your own voice (Kafka stages + S3).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stack_app = typer.Typer(help="The local broker + S3 server for development and tests.")
schemas_app = typer.Typer(help="Event schemas for producers and consumers in any language.")
topics_app = typer.Typer(help="The pipeline's topics on the configured broker.")
app.add_typer(stack_app, name="stack")
app.add_typer(schemas_app, name="schemas")
app.add_typer(topics_app, name="topics")
app.add_typer(models_app, name="models")
app.command("doctor")(doctor)

LOCAL_STORE = CACHE_HOME / "local-store"
OptionModel = TypeVar("OptionModel", bound=BaseModel)
# The option models' defaults are the CLI's: each flag's default is read from them, never repeated.
_VOICE = VoiceOptions()
_CONVERSION = ConversionOptions()
_OUTPUT = OutputOptions()
# The job-option flags `submit` and `cover` share; unset ones keep the option models' defaults.
F0MethodFlag = Annotated[
    F0Method | None, typer.Option(help=f"Pitch method (default {_VOICE.f0_method}).")
]
EpochsFlag = Annotated[int | None, typer.Option(help=f"Training epochs (default {_VOICE.epochs}).")]
FormatFlag = Annotated[
    OutputFormat | None,
    typer.Option("--format", help=f"Output format (default {_OUTPUT.format})."),
]


def _stack_config(settings: Settings) -> Any:
    from frontends.stack import StackConfig

    return StackConfig(
        root=settings.stack.dir,
        kafka_port=settings.stack.kafka_port,
        s3_port=settings.stack.s3_port,
        bucket=settings.storage.bucket,
        broker=settings.stack.broker,
        kafka_dir=settings.stack.kafka_dir,
    )


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _option_model(model: type[OptionModel], flags: dict[str, Any]) -> OptionModel:
    """The option model from a command's flags named as its fields (a command's ``locals()``);
    a value it refuses is an error naming the field, not a traceback."""
    try:
        return model(**{name: flags[name] for name in model.model_fields if name in flags})
    except ValidationError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


# --------------------------------------------------------------------------------------------------
# workers and the local stack
# --------------------------------------------------------------------------------------------------


@app.command()
def worker(
    stage: Annotated[str, typer.Argument(help="separator | trainer | converter | mixer")],
    group: Annotated[
        str | None, typer.Option(help="Consumer group (default singtome-<stage>-v<N>).")
    ] = None,
    handler: Annotated[
        str | None, typer.Option(help="Stage handler 'module:function' (tests, custom stages).")
    ] = None,
) -> None:
    """Run one stage worker: consume its topic until SIGTERM. Start more to scale."""
    from agents import registry

    try:
        declaration = registry.stage(stage)
    except ValueError as exc:
        _fail(str(exc))
        return
    from foundation.device import DeviceUnavailable
    from streams.worker import run_worker

    try:
        # The runtime imports the handler (the stage's own, or the override) once it has chosen
        # the device and created the topics.
        run_worker(
            stage,
            get_settings(),
            handler or declaration.handler,
            group=group,
            uses_device=declaration.uses_device,
        )
    except DeviceUnavailable as exc:
        _fail(str(exc))


@stack_app.command("up")
def stack_up(
    memory: Annotated[
        bool,
        typer.Option(
            "--memory",
            help="tansu only: keep the broker's log in memory: faster, but a broker restart "
            "loses every topic, consumer group and message (default: in the local S3 server; "
            "Apache Kafka always keeps its log on disk).",
        ),
    ] = False,
    broker: Annotated[
        str | None,
        typer.Option(
            help="kafka (Apache Kafka, KRaft; the default) or tansu (no JVM, starts in under a "
            "second). Default: SINGTOME_STACK_BROKER."
        ),
    ] = None,
) -> None:
    """Start the local broker and S3 server, create the bucket and every topic."""
    from dataclasses import replace

    from foundation.logging import configure_logging
    from frontends.stack import StackError, up

    settings = get_settings()
    configure_logging(settings.runtime.log_level, "console")
    if broker not in (None, "kafka", "tansu"):
        _fail(f"unknown broker {broker!r}; choose kafka or tansu")
    cfg = replace(_stack_config(settings), durable_broker=not memory)
    if broker:
        cfg = replace(cfg, broker=broker)
    try:
        up(cfg, partitions=settings.broker.topic_partitions)
    except StackError as exc:
        _fail(str(exc))
    typer.echo("# the stack is up; point singtome and boto3 at it with:")
    _echo_env(cfg)


def _echo_env(cfg: Any) -> None:
    from dataclasses import replace

    from frontends.stack import broker_info

    info = broker_info(cfg)
    typer.echo(f"# broker: {info['name']}")
    for key, value in replace(cfg, broker=info["kind"]).env().items():
        typer.echo(f"export {key}={value}")


@stack_app.command("down")
def stack_down() -> None:
    """Stop what `stack up` started (by PID)."""
    from frontends.stack import down

    down(_stack_config(get_settings()))
    typer.echo("stack stopped")


@stack_app.command("status")
def stack_status() -> None:
    """Show whether the broker and S3 server are running."""
    from frontends.stack import status

    typer.echo(json.dumps(status(_stack_config(get_settings())), indent=2))


@stack_app.command("env")
def stack_env() -> None:
    """Print the environment that points singtome at the local stack (eval it), after a comment
    naming the broker's kind and version."""
    _echo_env(_stack_config(get_settings()))


@topics_app.command("create")
def topics_create() -> None:
    """Create every missing pipeline and DLQ topic (configured partitions and replication)."""
    # Workers do this at start too; a deployment's init job runs it so that producers find the
    # topics, with production partitions and replication, before any worker has started.
    from foundation.logging import configure_logging
    from streams.admin import create_topics

    settings = get_settings()
    configure_logging(settings.runtime.log_level, settings.runtime.log_format)
    created = create_topics(settings)
    typer.echo(json.dumps({"created": created}))


# --------------------------------------------------------------------------------------------------
# schemas and settings
# --------------------------------------------------------------------------------------------------


@schemas_app.command("export")
def schemas_export(directory: Path) -> None:
    """Write a JSON Schema per topic and one AsyncAPI document into DIRECTORY."""
    from schemas.export import export

    for path in export(directory):
        typer.echo(str(path))


@app.command("settings")
def settings_table() -> None:
    """Print every setting (environment variable, default, meaning) as Markdown tables."""
    from streams.settings import settings_markdown

    typer.echo(settings_markdown())


# --------------------------------------------------------------------------------------------------
# jobs
# --------------------------------------------------------------------------------------------------


def _options(
    separator_model: str | None,
    skip_separation: bool,
    f0_up_key: int,
    f0_method: F0Method | None,
    epochs: int | None,
    fmt: OutputFormat | None,
    title: str | None,
    artist: str | None,
    force: bool,
) -> Any:
    from schemas.events import JobOptions

    options = JobOptions(force=force)
    options.separator.model = separator_model
    options.separator.skip = skip_separation
    options.conversion.f0_up_key = f0_up_key
    if f0_method:
        options.conversion.f0_method = f0_method
        options.voice.f0_method = f0_method
    if epochs:
        options.voice.epochs = epochs
    if fmt:
        options.output.format = fmt
    options.output.title = title
    options.output.artist = artist
    try:
        return JobOptions.model_validate(options.model_dump())
    except ValidationError as exc:
        _fail(str(exc))


@app.command()
def submit(
    songs: Annotated[
        list[Path],
        typer.Argument(exists=True, help="Song files, or folders of songs (one job each)."),
    ],
    voice: Annotated[
        Path | None, typer.Option(exists=True, file_okay=False, help="Voice dataset folder.")
    ] = None,
    model: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="Existing RVC .pth.")
    ] = None,
    index: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="The model's .index.")
    ] = None,
    separator_model: Annotated[str | None, typer.Option(help="Separation model.")] = None,
    skip_separation: Annotated[bool, typer.Option(help="The song is a bare vocal.")] = False,
    f0_up_key: Annotated[int, typer.Option(help="Transpose the voice (semitones).")] = 0,
    f0_method: F0MethodFlag = None,
    epochs: EpochsFlag = None,
    fmt: FormatFlag = None,
    title: Annotated[str | None, typer.Option()] = None,
    artist: Annotated[str | None, typer.Option()] = None,
    force: Annotated[bool, typer.Option(help="Recompute every stage.")] = False,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 3600,
) -> None:
    """Upload each song and the voice, publish song.uploaded; with --wait, follow every job."""
    from frontends.batch import expand_songs
    from streams.client import VoiceSource, submit_job
    from streams.store import S3Store

    if (voice is None) == (model is None):
        _fail("give exactly one of --voice DIR (a dataset) or --model FILE.pth")
    source = VoiceSource(dataset=voice, model=model, index=index)
    songs = expand_songs(songs)
    if not songs:
        _fail("no songs: the folder(s) hold no audio files")
    settings = get_settings()
    options = _options(
        separator_model, skip_separation, f0_up_key, f0_method, epochs, fmt, title, artist, force
    )
    store = S3Store(settings)
    events = []
    for song in songs:
        # Each job carries its own copy of the voice (jobs may only name their own uploads);
        # the trainer hashes the dataset, so the voice is trained once and reused by the others.
        event = submit_job(settings, store, song, voice=source, options=options)
        events.append(event)
        typer.echo(
            f"job {event.job_id} submitted (song s3://{settings.storage.bucket}/{event.keys.song})"
        )
    if not wait:
        return
    if len(events) == 1:
        result = follow(store, events[0].job_id, timeout)
        typer.echo(result.model_dump_json(indent=2))
        if result.topic != "track.ready":
            raise typer.Exit(1)
        return
    _follow_jobs(store, songs, [e.job_id for e in events], timeout)


def _follow_jobs(store: Any, songs: list[Path], job_ids: list[str], timeout: float) -> None:
    """A progress bar per job until all have ended, then a summary table; exit 1 on a failure."""
    from frontends.batch import job_fraction, wait_for_jobs

    labels = {
        job: f"{i + 1}. {song.name}"[:40]
        for i, (song, job) in enumerate(zip(songs, job_ids, strict=True))
    }
    with _bars(labels.values(), "waiting", width=40) as update:

        def show(job_id: str, state: dict[str, Any]) -> None:
            fraction, note = job_fraction(state)
            update(labels[job_id], None if "track.failed" in state else fraction, note)

        results = wait_for_jobs(store, job_ids, timeout, on_state=show)
    rows = []
    for song, job_id in zip(songs, job_ids, strict=True):
        result = results[job_id]
        if isinstance(result, TrackReady):
            rows.append([str(song), job_id, "ok", result.track_key])
        elif result is None:
            rows.append([str(song), job_id, f"still running after {timeout:.0f} s", "-"])
        else:
            rows.append([str(song), job_id, f"failed at {result.stage}: {result.code}", "-"])
    _summary_table(["song", "job", "result", "track"], rows)
    if not all(isinstance(r, TrackReady) for r in results.values()):
        raise typer.Exit(1)


def follow(store: Any, job_id: str, timeout: float) -> Any:
    """Show a progress bar per stage until the job ends."""
    from streams.client import wait_for_job
    from streams.topics import STAGES

    with _bars(STAGES, "waiting") as update:

        def show(state: dict[str, dict[str, Any]]) -> None:
            done = {s.stage for s in STAGES.values() if s.produces in state}
            progress = state.get("job.progress", {})
            for name in STAGES:
                if name in done:
                    update(name, 1.0, "done")
                elif progress.get("stage") == name:
                    update(name, progress.get("fraction", 0.0), progress.get("message", ""))
            failed = state.get("track.failed")
            if failed and failed.get("stage") in STAGES:
                update(failed["stage"], None, f"FAILED {failed.get('code')}")

        return wait_for_job(store, job_id, timeout, on_state=show)


@app.command()
def status(job_id: str) -> None:
    """Print what each stage has produced for JOB_ID (job state kept in S3)."""
    from streams.client import job_state
    from streams.store import S3Store

    state = job_state(S3Store(get_settings()), job_id)
    if not state:
        _fail(f"no job {job_id!r} in the store")
    typer.echo(json.dumps(state, indent=2, default=str))


@app.command()
def replay(
    topic: str,
    from_offset: Annotated[int | None, typer.Option(help="Start at this offset.")] = None,
    from_time: Annotated[
        datetime | None, typer.Option(help="Start at this time (ISO 8601).")
    ] = None,
    job_id: Annotated[str | None, typer.Option(help="Only this job's events.")] = None,
    to_group: Annotated[
        str | None,
        typer.Option(
            help="Set this consumer group's position instead of "
            "re-publishing; then run `singtome worker STAGE --group NAME`."
        ),
    ] = None,
) -> None:
    """Reprocess TOPIC from an offset or a time."""
    from streams.client import replay as do_replay

    if (from_offset is None) == (from_time is None):
        _fail("give exactly one of --from-offset or --from-time")
    try:
        result = do_replay(
            get_settings(),
            topic,
            from_offset=from_offset,
            from_time=from_time,
            job_id=job_id,
            to_group=to_group,
        )
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(json.dumps(result))


# --------------------------------------------------------------------------------------------------
# stages without Kafka: for musicians, notebooks and debugging
# --------------------------------------------------------------------------------------------------


@contextmanager
def _bars(
    names: Iterable[str], note: str = "", width: int = 10
) -> Iterator[Callable[[str, float | None, str], None]]:
    """One progress bar per name; yields ``update(name, fraction or None, message)``."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(f"{{task.description:<{width}}}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}% {task.fields[note]}"),
        TimeElapsedColumn(),
        console=_console(),
    ) as bars:
        # A bar's clock starts with its first update (songs of a batch start one after another).
        tasks = {name: bars.add_task(name, total=1.0, note=note, start=False) for name in names}

        def update(name: str, fraction: float | None, message: str = "") -> None:
            bars.start_task(tasks[name])
            bars.update(tasks[name], completed=fraction, note=message[:60])

        yield update


@contextmanager
def _bar(description: str) -> Iterator[Callable[[float, str], None]]:
    """A single progress bar; yields the ``progress(fraction, message)`` callback stages take."""
    with _bars([description]) as update:
        yield lambda fraction, message="": update(description, fraction, message)


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _quiet_logs() -> None:
    from foundation.logging import configure_logging

    configure_logging("WARNING", "console")


def _stage_errors(fn: Callable[[], Any]) -> Any:
    """Run a stage; a StageError is the user's input at fault: say so and exit 2, no traceback."""
    from foundation.errors import StageError

    try:
        return fn()
    except StageError as exc:
        _fail(f"{exc.code}: {exc.message}", code=2)


@app.command()
def separate(
    song: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    model: Annotated[
        str | None, typer.Option(help="'spleeter' or a UVR model file in SINGTOME_MODEL_DIR/uvr.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default <song>_stems).")] = None,
) -> None:
    """Separate SONG into vocal and accompaniment stems (FLAC, 44.1 kHz stereo)."""
    from agents.separator.cli import separate_command

    _quiet_logs()
    with _bar("separating") as progress:
        result = _stage_errors(lambda: separate_command(song, model, out, progress=progress))
    for name, path in result.stems.items():
        typer.echo(f"{name}\t{path}")


@app.command()
def train(
    trainset_dir: Annotated[
        Path | None,
        typer.Option(help="Voice recordings folder (default $SM_CHANNEL_TRAINING on SageMaker)."),
    ] = None,
    exp_dir: Annotated[
        str | None,
        typer.Option(help="Experiment name or folder for the model (default $SM_MODEL_DIR)."),
    ] = None,
    sample_rate: Annotated[SampleRate, typer.Option()] = _VOICE.sample_rate,
    f0_method: Annotated[F0Method, typer.Option()] = _VOICE.f0_method,
    epochs: Annotated[int, typer.Option(min=1)] = _VOICE.epochs,
    batch_size: Annotated[int, typer.Option(min=1)] = _VOICE.batch_size,
    pretrained_g: Annotated[Path | None, typer.Option(help="e.g. f0G40k.pth")] = None,
    pretrained_d: Annotated[Path | None, typer.Option(help="e.g. f0D40k.pth")] = None,
) -> None:
    """Train a voice model (RVC v2; the WORLD fallback profile when no HuBERT is configured)."""
    from agents.trainer.stage import VoiceTrainingConfig, train_voice, voice_kind
    from streams.client import AUDIO_SUFFIXES

    trainset_dir = trainset_dir or _env_path("SM_CHANNEL_TRAINING")
    target = exp_dir or os.environ.get("SM_MODEL_DIR")
    if trainset_dir is None or target is None:
        _fail(
            "give --trainset-dir and --exp-dir "
            "(or run where SM_CHANNEL_TRAINING and SM_MODEL_DIR are set)"
        )
    assert trainset_dir is not None and target is not None
    out_dir = Path(target) if ("/" in target or Path(target).is_dir()) else Path("logs") / target
    settings = get_settings()
    files = [p for p in sorted(trainset_dir.rglob("*")) if p.suffix.lower() in AUDIO_SUFFIXES]
    config = VoiceTrainingConfig.from_options(
        _option_model(VoiceOptions, locals()),
        pretrained_g=str(pretrained_g) if pretrained_g else None,
        pretrained_d=str(pretrained_d) if pretrained_d else None,
        model_size=settings.trainer.model_size,
    )
    _quiet_logs()
    if voice_kind(settings.models) == "world":
        typer.secho(
            "no HuBERT/ContentVec checkpoint (`singtome models pull`, or SINGTOME_HUBERT_PATH): "
            "learning the WORLD fallback voice profile, not an RVC model",
            fg=typer.colors.YELLOW,
            err=True,
        )
    with _bar("training") as progress:
        trained = _stage_errors(
            lambda: train_voice(
                files,
                out_dir,
                config,
                settings.trainer,
                progress,
                models=settings.models,
                audio=settings.audio,
            )
        )
    for line in trained.skipped:
        typer.secho(f"skipped {line}", fg=typer.colors.YELLOW, err=True)
    typer.echo(
        json.dumps(
            {
                "kind": trained.kind,
                "files": {k: str(v) for k, v in trained.files.items()},
                "metrics": trained.metrics,
            },
            indent=2,
        )
    )


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


@app.command()
def convert(
    sid0: Annotated[str, typer.Option("--sid0", help="Voice model .pth (or WORLD profile.npz).")],
    input_audio0: Annotated[str, typer.Option("--input-audio0", help="The vocals to convert.")],
    file_index2: Annotated[
        str | None, typer.Option("--file-index2", help="The model's .index.")
    ] = None,
    f0_up_key: Annotated[int, typer.Option("--f0-up-key")] = _CONVERSION.f0_up_key,
    f0_method: Annotated[F0Method, typer.Option("--f0-method")] = _CONVERSION.f0_method,
    index_rate: Annotated[float, typer.Option("--index-rate")] = _CONVERSION.index_rate,
    filter_radius: Annotated[int, typer.Option("--filter-radius")] = _CONVERSION.filter_radius,
    rms_mix_rate: Annotated[float, typer.Option("--rms-mix-rate")] = _CONVERSION.rms_mix_rate,
    protect: Annotated[float, typer.Option("--protect")] = _CONVERSION.protect,
    out: Annotated[str | None, typer.Option("--out", help="Output FLAC.")] = None,
) -> None:
    """Convert vocals into a voice (the seed's rvc-infer.py, same option names)."""
    from agents.converter.cli import convert_command

    params = _option_model(ConversionOptions, locals())
    _quiet_logs()
    result = _stage_errors(
        lambda: convert_command(sid0, input_audio0, file_index2, params=params, out=out)
    )
    typer.echo(
        json.dumps(
            {
                "path": str(result.path),
                "backend": result.backend,
                "sample_rate": result.sample_rate,
                "duration_s": result.duration_s,
            }
        )
    )


@app.command()
def cover(
    songs: Annotated[
        list[Path],
        typer.Argument(
            exists=True, help="Song files, or folders of songs (all covered with one voice)."
        ),
    ],
    voice: Annotated[
        Path, typer.Option(exists=True, help="Voice dataset folder, or an RVC .pth / profile.npz.")
    ],
    index: Annotated[Path | None, typer.Option(exists=True, help="The model's .index.")] = None,
    out: Annotated[
        str | None,
        typer.Option(help="Where to copy the track; a folder (DIR/) for several songs."),
    ] = None,
    store: Annotated[
        Path, typer.Option(help="Local object store (cache of stems and voices).")
    ] = LOCAL_STORE,
    separator_model: Annotated[str | None, typer.Option()] = None,
    skip_separation: Annotated[bool, typer.Option(help="The song is a bare vocal.")] = False,
    f0_up_key: Annotated[int, typer.Option(help="Transpose the voice (semitones).")] = 0,
    f0_method: F0MethodFlag = None,
    epochs: EpochsFlag = None,
    fmt: FormatFlag = None,
    title: Annotated[str | None, typer.Option()] = None,
    artist: Annotated[str | None, typer.Option()] = None,
    report: Annotated[
        Path | None, typer.Option(help="Also write a PNG report here (a folder for several songs).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Recompute every stage.")] = False,
    karaoke_model: Annotated[
        str | None, typer.Option(help="Split lead and backing vocals with this UVR model.")
    ] = None,
    convert_backing: Annotated[
        bool, typer.Option(help="Convert the backing vocals too (needs --karaoke-model).")
    ] = False,
) -> None:
    """Covers in this process (no broker, a local store); several songs share one voice, trained
    or loaded once."""
    import shutil

    from frontends.batch import expand_songs
    from frontends.local import run_cover
    from streams.client import VoiceSource

    settings = get_settings()
    options = _options(
        separator_model, skip_separation, f0_up_key, f0_method, epochs, fmt, title, artist, force
    )
    options.separator.karaoke_model = karaoke_model
    options.conversion.backing = convert_backing
    source = VoiceSource.from_path(voice, index)
    _quiet_logs()
    batch = (
        len(songs) > 1
        or any(s.is_dir() for s in songs)
        or (out is not None and (out.endswith(("/", os.sep)) or Path(out).is_dir()))
    )
    if batch:
        _cover_batch(expand_songs(songs), settings, store, source, options, out, report)
        return
    song = songs[0]
    with _bars(STAGE_NAMES) as progress:
        ready, track = _stage_errors(
            lambda: run_cover(
                song,
                settings=settings,
                store_dir=store,
                voice=source,
                options=options,
                progress=progress,
            )
        )
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(track, out)
        track = Path(out)
    if report is not None:
        from agents.mixer.report import report_for_job
        from streams.store import LocalStore

        report_for_job(LocalStore(store), ready.job_id, report)
        typer.echo(f"report\t{report}")
    typer.echo(f"track\t{track}")
    if ready.quality is not None:
        typer.echo(quality_lines(ready.quality))
    typer.echo(ready.model_dump_json(indent=2))


def _cover_batch(
    songs: list[Path],
    settings: Settings,
    store: Path,
    voice: VoiceSource,
    options: Any,
    out: str | None,
    report: Path | None,
) -> None:
    """One progress bar per song, then a summary table; exit 2 when a song failed."""
    from frontends.batch import run_covers

    if not songs:
        _fail("no songs: the folder(s) hold no audio files")
    labels = [f"{i + 1}. {song.name}"[:40] for i, song in enumerate(songs)]
    stage_index = {name: i for i, name in enumerate(STAGE_NAMES)}
    with _bars(labels, "waiting", width=40) as update:

        def progress(song: int, stage: str, fraction: float, message: str) -> None:
            overall = (stage_index.get(stage, 0) + fraction) / len(STAGE_NAMES)
            update(labels[song], overall, f"{stage}: {message}")

        outcomes = run_covers(
            songs,
            settings=settings,
            store_dir=store,
            voice=voice,
            options=options,
            out_dir=Path(out) if out else None,
            progress=progress,
        )
        for label, outcome in zip(labels, outcomes, strict=True):
            update(label, 1.0 if outcome.ok else None, "done" if outcome.ok else "FAILED")
    if report is not None:
        from agents.mixer.report import report_for_job
        from streams.store import LocalStore

        report.mkdir(parents=True, exist_ok=True)
        for outcome in outcomes:
            if outcome.ready is not None:
                report_for_job(
                    LocalStore(store), outcome.ready.job_id, report / f"{outcome.song.stem}.png"
                )
    _summary_table(
        ["song", "result", "voice", "seconds", "cover"],
        [
            [
                str(o.song),
                "ok" if o.ok else (o.error or "failed"),
                o.voice or "-",
                f"{o.seconds:.1f}",
                str(o.track) if o.track else "-",
            ]
            for o in outcomes
        ],
    )
    if not all(o.ok for o in outcomes):
        raise typer.Exit(2)


def _summary_table(columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, title="summary")
    for row in rows:
        table.add_row(*row)
    Console(width=200).print(table)


def quality_lines(quality: Any) -> str:
    """The quality report as tab-separated lines (name, value), for people and scripts."""

    def shown(value: float | None, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    rows = [
        ("similarity_to_voice", shown(quality.speaker_similarity, ".3f")),
        ("source_similarity_to_voice", shown(quality.source_similarity, ".3f")),
        ("f0_error_cents", shown(quality.f0_error_cents, ".1f")),
        ("voiced_kept", shown(quality.voiced_kept, ".1%")),
        ("key", f"{quality.key_semitones:+d} semitones ({quality.key_method})"),
        ("backing_converted", str(quality.backing_converted).lower()),
    ]
    return "\n".join(f"quality.{name}\t{value}" for name, value in rows)


@app.command("report")
def report_command(
    job_id: str,
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("report.png"),
    store: Annotated[
        Path | None, typer.Option(help="A local store (from `cover`) instead of S3.")
    ] = None,
) -> None:
    """Draw waveforms, spectrograms and f0 curves of a job's vocals and mix into a PNG."""
    from agents.mixer.report import report_for_job
    from streams.store import LocalStore, S3Store

    _quiet_logs()
    source = LocalStore(store) if store is not None else S3Store(get_settings())
    typer.echo(str(report_for_job(source, job_id, out)))


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo inputs and the cover go.")] = Path(
        "demo-output"
    ),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the cover.")] = 1800,
    pull: Annotated[
        bool, typer.Option("--pull/--no-pull", help="Pull the RVC models first.")
    ] = True,
    pull_timeout: Annotated[
        float, typer.Option(help="Seconds the model download may take (it resumes later).")
    ] = 600,
    epochs: Annotated[
        int | None, typer.Option(help="Training epochs (default: 2 for RVC on the CPU).")
    ] = None,
) -> None:
    """A real cover end to end: local broker + S3, one worker per stage, a generated song."""
    from foundation.logging import configure_logging
    from frontends.cli_models import download_bars
    from frontends.demo import run_demo

    settings = get_settings()
    configure_logging("WARNING", "console")

    def say(line: str) -> None:
        typer.secho(line, fg=typer.colors.CYAN, err=True)

    result = run_demo(
        settings,
        _stack_config(settings),
        out,
        follow,
        say,
        timeout,
        pull=pull,
        pull_timeout_s=pull_timeout,
        download_progress=download_bars,
        epochs=epochs,
    )
    typer.echo(result.model_dump_json(indent=2))
    if not isinstance(result, TrackReady):
        raise typer.Exit(1)


def main() -> None:
    from streams.allocator import keep_freed_memory

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    keep_freed_memory()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
