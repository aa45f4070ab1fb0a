"""``kmsemu keys``: mint and check lab product keys, list the KMS client setup keys."""

from __future__ import annotations

from typing import Any

import click

from kmsemu.catalog import Catalog, Product, default_catalog
from kmsemu.cli.common import PRODUCT, emit, json_option
from kmsemu.errors import LocalError
from kmsemu.keys.product_key import (
    MAX_QUANTITY,
    MAX_SERIAL,
    Diagnosis,
    KeyType,
    ProductKey,
    check,
    mint,
    setup_key,
)

_TYPES = [t.label for t in KeyType]


@click.group()
def keys() -> None:
    """Lab product keys (this project's own format; never real product keys)."""


def _product_name(catalog: Catalog, number: int) -> str | None:
    return catalog.products[number].key if number < len(catalog) else None


def _key_json(key: ProductKey, catalog: Catalog) -> dict[str, Any]:
    return {
        "key": str(key),
        "type": key.type.label,
        "product": _product_name(catalog, key.product),
        "product_number": key.product,
        "serial": key.serial,
        "quantity": key.quantity,
        "fingerprint": key.fingerprint,
        "last5": key.last5,
    }


@keys.command("mint")
@click.option(
    "--type", "key_type", type=click.Choice(_TYPES), required=True, help="What the key is for."
)
@click.option("--product", type=PRODUCT, required=True, help="Catalog product key, name or SKU id.")
@click.option(
    "--serial", type=click.IntRange(0, MAX_SERIAL), help="Serial number (default: a random one)."
)
@click.option(
    "--quantity",
    type=click.IntRange(0, MAX_QUANTITY),
    default=None,
    help="User licences a subscription key adds (subscription keys only).",
)
@json_option
def mint_command(
    key_type: str, product: Product, serial: int | None, quantity: int | None, as_json: bool
) -> None:
    """Mint a lab key for a catalog product."""
    catalog = default_catalog()
    kind = KeyType.from_label(key_type)
    if quantity and kind is not KeyType.SUBSCRIPTION:
        raise click.UsageError("--quantity is for subscription keys only")
    if serial is None:
        import secrets

        serial = secrets.randbelow(MAX_SERIAL + 1)
    key = mint(kind, product.number, serial, quantity or 0)
    if as_json:
        emit(_key_json(key, catalog))
    else:
        click.echo(str(key))


@keys.command("check")
@click.argument("key")
@json_option
def check_command(key: str, as_json: bool) -> None:
    """Say whether KEY is well formed, or exactly what is wrong and which keys were meant.

    Exit 1 when it is not well formed. Well formed says nothing about being
    registered, unused or unblocked: that is the MAK service's to say.
    """
    catalog = default_catalog()
    diagnosis = check(key)
    data = _diagnosis_json(diagnosis, catalog)
    if diagnosis.key is None:
        # the code is the first problem's (keys.md); the others and the keys meant follow
        first, *others = diagnosis.problems
        notes = [p.message for p in others]
        if diagnosis.candidates:
            notes += ["Did you mean:", *(f"  {c}" for c in diagnosis.candidates)]
        raise LocalError(first.code, first.message, output=data, notes=notes)
    if as_json:
        emit(data)
        return
    k = data
    click.echo(
        f"{k['key']}: well formed ({k['type']} key for "
        f"{k['product'] or 'product #' + str(k['product_number'])}, serial "
        f"{k['serial']}, quantity {k['quantity']}, fingerprint {k['fingerprint']})"
    )


def _diagnosis_json(diagnosis: Diagnosis, catalog: Catalog) -> dict[str, Any]:
    data: dict[str, Any] = {
        "well_formed": diagnosis.well_formed,
        "normalised": diagnosis.normalised,
        "problems": [p.to_json() for p in diagnosis.problems],
        "candidates": list(diagnosis.candidates),
        "candidates_total": diagnosis.candidates_total,
    }
    if diagnosis.key is not None:
        data.update(_key_json(diagnosis.key, catalog))
    return data


@keys.command("setup-keys")
@json_option
def setup_keys_command(as_json: bool) -> None:
    """The published KMS client setup key of every volume product of the catalog."""
    catalog = default_catalog()
    rows: list[dict[str, Any]] = [
        {"product": p.key, "name": p.name, "number": p.number, "key": str(setup_key(p.number))}
        for p in catalog.volume
    ]
    if as_json:
        emit({"keys": rows})
        return
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        click.echo(f"{row['name']:<{width}}  {row['key']}")
