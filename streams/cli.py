"""`singtome` — the command line. Commands only parse arguments and call into the packages."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from streams.settings import Settings, get_settings

app = typer.Typer(
    help="singtome: song covers in your own voice (Kafka stages + S3).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stack_app = typer.Typer(help="The local broker + S3 server for development and tests.")
schemas_app = typer.Typer(help="Event schemas for producers and consumers in any language.")
app.add_typer(stack_app, name="stack")
app.add_typer(schemas_app, name="schemas")

STAGE_NAMES = ("separator", "trainer", "converter", "mixer")


def _stack_config(settings: Settings) -> Any:
    from streams.stack import StackConfig

    return StackConfig(
        root=settings.stack_dir,
        kafka_port=settings.kafka_port,
        s3_port=settings.s3_port,
        bucket=settings.s3_bucket,
    )


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


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
    if stage not in STAGE_NAMES:
        _fail(f"unknown stage {stage!r}; choose one of {', '.join(STAGE_NAMES)}")
    from streams.worker import run_worker

    run_worker(stage, get_settings(), handler_spec=handler, group=group)


@stack_app.command("up")
def stack_up(
    durable: Annotated[bool, typer.Option(help="Keep the broker's log in S3.")] = False,
) -> None:
    """Start the local broker and S3 server, create the bucket and every topic."""
    from dataclasses import replace

    from streams.logging import configure_logging
    from streams.stack import StackError, up

    settings = get_settings()
    configure_logging(settings.log_level, "console")
    cfg = replace(_stack_config(settings), durable_broker=durable)
    try:
        up(cfg, partitions=settings.topic_partitions)
    except StackError as exc:
        _fail(str(exc))
    typer.echo("# the stack is up; point singtome and boto3 at it with:")
    for key, value in cfg.env().items():
        typer.echo(f"export {key}={value}")


@stack_app.command("down")
def stack_down() -> None:
    """Stop what `stack up` started (by PID)."""
    from streams.stack import down

    down(_stack_config(get_settings()))
    typer.echo("stack stopped")


@stack_app.command("status")
def stack_status() -> None:
    """Show whether the broker and S3 server are running."""
    from streams.stack import status

    typer.echo(json.dumps(status(_stack_config(get_settings())), indent=2))


@stack_app.command("env")
def stack_env() -> None:
    """Print the environment that points singtome at the local stack (eval it)."""
    for key, value in _stack_config(get_settings()).env().items():
        typer.echo(f"export {key}={value}")


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
    """Print every setting (environment variable, default, meaning) as a Markdown table."""
    typer.echo(settings_markdown())


def settings_markdown() -> str:
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, Path):
            default = str(default).replace(str(Path.home()), "~")
        shown = "(unset)" if default is None else f"`{default}`"
        rows.append(f"| `SINGTOME_{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------------
# jobs
# --------------------------------------------------------------------------------------------------


def _options(
    separator_model: str | None,
    skip_separation: bool,
    f0_up_key: int,
    f0_method: str | None,
    epochs: int | None,
    fmt: str | None,
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
        options.output.format = fmt  # type: ignore[assignment]
    options.output.title = title
    options.output.artist = artist
    return JobOptions.model_validate(options.model_dump())


@app.command()
def submit(
    song: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The song file.")],
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
    f0_method: Annotated[str | None, typer.Option(help="Pitch method.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="wav|flac|mp3|m4a")] = None,
    title: Annotated[str | None, typer.Option()] = None,
    artist: Annotated[str | None, typer.Option()] = None,
    force: Annotated[bool, typer.Option(help="Recompute every stage.")] = False,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 3600,
) -> None:
    """Upload SONG and a voice, publish song.uploaded; with --wait, show progress to the end."""
    from pydantic import ValidationError

    from streams.client import submit_job
    from streams.store import S3Store

    if (voice is None) == (model is None):
        _fail("give exactly one of --voice DIR (a dataset) or --model FILE.pth")
    settings = get_settings()
    try:
        options = _options(
            separator_model,
            skip_separation,
            f0_up_key,
            f0_method,
            epochs,
            fmt,
            title,
            artist,
            force,
        )
    except ValidationError as exc:
        _fail(str(exc))
    store = S3Store(settings)
    event = submit_job(
        settings,
        store,
        song,
        voice_dir=voice,
        voice_model=model,
        voice_index=index,
        options=options,
    )
    typer.echo(f"job {event.job_id} submitted (song s3://{settings.s3_bucket}/{event.keys.song})")
    if wait:
        result = follow(store, event.job_id, timeout)
        typer.echo(result.model_dump_json(indent=2))
        if result.topic != "track.ready":
            raise typer.Exit(1)


def follow(store: Any, job_id: str, timeout: float) -> Any:
    """Show a progress bar per stage until the job ends."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from streams.client import wait_for_job
    from streams.topics import STAGES

    with Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}% {task.fields[note]}"),
        TimeElapsedColumn(),
        transient=False,
    ) as bars:
        tasks = {name: bars.add_task(name, total=1.0, note="waiting") for name in STAGES}

        def show(state: dict[str, dict[str, Any]]) -> None:
            done = {s.stage for s in STAGES.values() if s.produces in state}
            progress = state.get("job.progress", {})
            for name, task in tasks.items():
                if name in done:
                    bars.update(task, completed=1.0, note="done")
                elif progress.get("stage") == name:
                    bars.update(
                        task,
                        completed=progress.get("fraction", 0.0),
                        note=progress.get("message", ""),
                    )
            if "track.failed" in state:
                failed = state["track.failed"]
                if failed.get("stage") in tasks:
                    bars.update(tasks[failed["stage"]], note=f"FAILED {failed.get('code')}")

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


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
