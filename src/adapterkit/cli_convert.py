"""``adapterkit convert``: AdapterHub adapters in and out (a thin command over ``export/convert.py``)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

FORMATS = ("adapterhub",)


def register(app: typer.Typer, cli_errors) -> None:
    """Add ``convert`` to the CLI ``app`` (with its one-line error handling ``cli_errors``)."""
    app.command()(cli_errors(convert))


def convert(
    source: Annotated[Optional[str], typer.Argument(help="--from: the directory to convert")] = None,
    from_format: Annotated[Optional[str], typer.Option("--from", help="read SOURCE in this format: adapterhub")] = None,
    to_format: Annotated[Optional[str], typer.Option("--to", help="write --adapter in this format: adapterhub")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="--to: the adapter/ folder of a training run")] = None,
    output: Annotated[str, typer.Option(help="the directory to create (must not exist)")] = ...,
    model: Annotated[Optional[str], typer.Option(help="base model (default: the one the adapter records)")] = None,
    drop_layer_norms: Annotated[bool, typer.Option(
        help="--to adapterhub: export an adapter whose own layer norms differ from the model's without them "
             "(AdapterHub has none); prints what that changes")] = False,
):
    """Convert adapters between formats: an AdapterHub (`adapters`) directory to an adapterkit adapter
    (--from adapterhub DIR), or an adapterkit adapter to a directory `adapters` loads (--to adapterhub --adapter DIR)."""
    from .export.convert import from_adapterhub, to_adapterhub

    for given in (from_format, to_format):
        if given is not None and given not in FORMATS:
            raise ValueError(f"unknown format {given!r}; adapterkit converts {', '.join(FORMATS)}")
    if (from_format is None) == (to_format is None):
        raise ValueError("give either --from adapterhub DIR or --to adapterhub --adapter DIR")
    if from_format is not None:
        if source is None or adapter is not None:
            raise ValueError("--from adapterhub takes the directory to convert as its argument (not --adapter)")
        lines = from_adapterhub(source, output, model)
    else:
        if adapter is None or source is not None:
            raise ValueError("--to adapterhub takes the adapter to export as --adapter DIR")
        lines = to_adapterhub(adapter, output, model, drop_layer_norms)
    for line in lines:
        typer.echo(line)
