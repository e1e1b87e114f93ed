"""``medhub dashboard DIR``: serve the dashboard of one results folder. Kept light to import."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(soft_wrap=True)


def dashboard_command(
    folder: Annotated[Path, typer.Argument(help="A `medhub run`, `batch`, `release` or `compare` output folder.")],
    host: Annotated[str, typer.Option(help="Address to bind; the default serves this machine only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    anonymize: Annotated[bool, typer.Option("--anonymize", help="Hide patient names, IDs and birth dates in every "
                                            "page, answer and download; case ids become pseudonyms.")] = False,
) -> None:
    """Browse results in a web browser: overview, case table, slice viewer with overlays, comparisons (read-only)."""
    import uvicorn

    from medhub.dashboard.app import create_app

    app = create_app(folder, anonymize=anonymize)
    state = app.state.dashboard
    scope = ("only this machine can connect" if host in ("127.0.0.1", "localhost", "::1") else
             "other machines on the network can connect")
    console.print(f"medhub dashboard: {state.catalog.kind} folder {state.folder} at http://{host}:{port}/ "
                  f"(bound to {host}: {scope}; read-only{'; anonymized' if anonymize else ''}). Ctrl+C stops it.",
                  highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="warning")
