"""Running it: ``serve`` (the HTTP API) and ``doctor`` (is this installation sound?)."""

from __future__ import annotations

import click

from . import Context, cli, emit

# -- doctor --------------------------------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list of {check, status, detail, hint}.")
@click.pass_obj
def doctor(obj: Context, as_json: bool) -> None:
    """Check the database, the model and the process layout: one ok / warn / fail line per check,
    with what to do next. Exit code 1 if any check fails."""
    from ..doctor import format_line, run, summary

    checks = []
    for check in run(obj.settings):
        checks.append(check)
        if not as_json:
            click.echo(format_line(check))
    if as_json:
        emit([c.as_dict() for c in checks])
    else:
        click.echo(summary(checks))
    if any(c.status == "fail" for c in checks):
        raise click.exceptions.Exit(1)


# -- serve ---------------------------------------------------------------------------------------

@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", "model_workers", type=click.IntRange(1, 64),
              help="Model worker processes (default: CPU count).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.pass_obj
def serve(obj: Context, host: str, port: int, model_workers: int | None, log_level: str) -> None:
    """Run the HTTP API (docs at /docs). SIGTERM or Ctrl-C drains requests in flight, then stops."""
    import logging
    import signal
    from dataclasses import replace

    import uvicorn

    from ..models import check_model_files
    from ..service.app import create_app
    from ..service.auth import check_replica_key
    from ..service.connections import uvicorn_options
    from ..service.observability import configure_logging
    from ..store import database_url, prepare
    from ..store.pkl import uses_pkl

    settings = obj.settings if model_workers is None else replace(obj.settings, workers=model_workers)
    configure_logging(getattr(logging, log_level.upper()))
    # A model that cannot load without a download (e.g. DeepFace's weights file missing) would
    # leave a service answering 503 forever: refuse to start, saying which file goes where.
    check_model_files(settings.model)
    # Database first, so a wrong URL or a missing pgvector is a plain message and exit code 1, not
    # a failed application start-up. (No connection is kept: the app opens its pool at start-up.)
    if not uses_pkl(settings.store):  # PKL mode has no database
        check_replica_key(settings)  # external database: the admin key must be configured
        url = database_url(settings)
        prepare(url)
        settings = replace(settings, database_url=url)
    # Uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the handler found before it
    # started. Make that handler a normal exit, so atexit hooks run: the last one stops the
    # embedded PostgreSQL.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_after_drain)
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False,
                log_level=log_level, timeout_graceful_shutdown=60, server_header=False,
                **uvicorn_options(settings))  # connection limits and timeouts


def _exit_after_drain(signum: int, frame: object) -> None:
    raise SystemExit(0)
