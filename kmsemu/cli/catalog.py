"""``kmsemu catalog``: the products hosts serve and clients can be."""

from __future__ import annotations

from pathlib import Path

import click

from kmsemu.catalog import load_catalog
from kmsemu.cli.common import emit, json_option


@click.command()
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Validate and list this catalog file instead of the shipped one.",
)
@json_option
def catalog(path: Path | None, as_json: bool) -> None:
    """List every product with its application id, SKU id, KMS count id and threshold."""
    products = load_catalog(path)  # ConfigError bad_catalog: exit 1
    if as_json:
        emit({"products": [p.to_json() for p in products]})
        return
    for p in products:
        click.echo(f"{p.number:>3}  {p.key}")
        click.echo(f"     Name: {p.name}")
        click.echo(f"     Application: {p.application} ({p.application_id})")
        click.echo(f"     SKU ID: {p.sku_id}")
        click.echo(f"     KMS count ID: {p.kms_count_id}")
        click.echo(f"     Threshold: {p.threshold}    Channel: {p.channel}")
