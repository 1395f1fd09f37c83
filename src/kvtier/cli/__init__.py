"""The ``kvtier`` command line: bench, size, sim, inspect."""

from __future__ import annotations

import typer

from .bench import bench
from .inspect import inspect
from .sim import sim, size

app = typer.Typer(help="kvtier: tiered KV-cache offload for LLM serving.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
app.command()(bench)
app.command()(size)
app.command()(sim)
app.command()(inspect)

__all__ = ["app"]
