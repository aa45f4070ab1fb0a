"""The shipped catalog and its validation."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from kmsemu.catalog import default_catalog, load_catalog
from kmsemu.errors import ConfigError

WINDOWS = uuid.UUID("55c92734-d682-4d71-983e-d6ec3f16059f")
OFFICE = uuid.UUID("0ff1ce15-a989-479d-af46-f275c6370663")
CATALOG_FILE = Path(__file__).parents[1] / "kmsemu" / "data" / "catalog.toml"


def test_required_products_and_thresholds() -> None:
    catalog = default_catalog()
    thresholds = {p.name: p.threshold for p in catalog}
    for name in (
        "Windows 10 Pro",
        "Windows 11 Pro",
        "Windows 10 Enterprise",
        "Windows 11 Enterprise",
    ):
        assert thresholds[name] == 25
    for version in ("2019", "2022", "2025"):
        for edition in ("Standard", "Datacenter"):
            assert thresholds[f"Windows Server {version} {edition}"] == 5
    for version in ("2021", "2024"):
        assert thresholds[f"Office LTSC Professional Plus {version}"] == 5


def test_ids_are_our_own_uuid5_except_public_application_ids() -> None:
    import tomllib

    namespace = uuid.UUID(tomllib.loads(CATALOG_FILE.read_text())["namespace"])
    subscriptions = uuid.uuid5(namespace, "application:subscriptions")
    for p in default_catalog():
        assert p.application_id in (
            (WINDOWS, OFFICE) if p.channel == "volume" else (subscriptions,)
        )
        assert p.sku_id == uuid.uuid5(namespace, f"sku:{p.key}")
        assert p.kms_count_id == uuid.uuid5(namespace, f"kms-count:{p.kms_count_group}")
        assert (p.application_id == OFFICE) == (p.family == "office")


def test_order_is_frozen() -> None:
    """Product numbers are part of lab keys: entries may only be appended."""
    first = [p.key for p in default_catalog()][:12]
    assert first == [
        "windows-11-pro",
        "windows-11-enterprise",
        "windows-10-pro",
        "windows-10-enterprise",
        "windows-server-2019-standard",
        "windows-server-2019-datacenter",
        "windows-server-2022-standard",
        "windows-server-2022-datacenter",
        "windows-server-2025-standard",
        "windows-server-2025-datacenter",
        "office-ltsc-2021-proplus",
        "office-ltsc-2024-proplus",
    ]


def test_find_by_key_name_or_sku() -> None:
    catalog = default_catalog()
    product = catalog.find("Windows 11 Pro")
    assert catalog.find("windows-11-pro") is product
    assert catalog.find(str(product.sku_id)) is product
    with pytest.raises(ConfigError, match="no product 'nope'"):
        catalog.find("nope")


def _entry(**override: object) -> str:
    fields = {
        "key": '"p"',
        "name": '"P"',
        "description": '"d"',
        "family": '"office"',
        "channel": '"volume"',
        "threshold": "5",
        "application_id": f'"{OFFICE}"',
        "sku_id": f'"{uuid.uuid4()}"',
        "kms_count_id": f'"{uuid.uuid4()}"',
        "kms_count_group": '"g"',
    }
    fields.update({k: str(v) for k, v in override.items()})
    body = "\n".join(f"{k} = {v}" for k, v in fields.items() if v != "DROP")
    return f'[applications]\n"{OFFICE}" = "Office"\n\n[[products]]\n{body}\n'


@pytest.mark.parametrize(
    "override, message",
    [
        ({"threshold": 0}, "threshold 0 is outside 1..1000"),
        ({"threshold": '"5"'}, "threshold must be a int"),
        ({"sku_id": '"not-a-guid"'}, "sku_id 'not-a-guid' is not a GUID"),
        ({"family": '"toaster"'}, "family 'toaster'"),
        ({"application_id": f'"{WINDOWS}"'}, "application_id is not in [applications]"),
        ({"kms_count_group": "DROP"}, "missing field kms_count_group"),
        ({"colour": '"red"'}, "unknown field(s) colour"),
    ],
)
def test_bad_entries_are_refused_by_name(
    tmp_path: Path, override: dict[str, object], message: str
) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(_entry(**override))
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    assert "product #0 (p)" in str(info.value)
    assert message in str(info.value)


def test_duplicates_and_syntax_errors(tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(_entry() + _entry().split("\n\n", 1)[1])
    with pytest.raises(ConfigError, match=r"product #1 .* duplicate key p"):
        load_catalog(path)
    path.write_text("[[products]\n")
    with pytest.raises(ConfigError, match=r"catalog .*catalog\.toml"):
        load_catalog(path)
    with pytest.raises(ConfigError, match="cannot read catalog"):
        load_catalog(tmp_path / "missing.toml")


def test_errors_doc_is_generated_from_the_registry() -> None:
    from kmsemu.errors import markdown_table

    doc = Path(__file__).parents[1] / "docs" / "errors.md"
    assert doc.read_text() == markdown_table(), "run: python -m kmsemu.errors > docs/errors.md"


def test_subscription_offers_are_appended_and_never_served_by_kms() -> None:
    catalog = default_catalog()
    offers = [p for p in catalog if p.channel == "subscription"]
    assert [p.key for p in offers] == [
        "m365-business-basic",
        "m365-business-standard",
        "m365-business-premium",
        "office-365-e3",
    ]
    assert all(p.number >= 12 and p.family == "subscription" for p in offers)
    assert catalog.volume == tuple(p for p in catalog if p.channel == "volume")
    for p in offers:
        assert not catalog.serves(p.application_id.bytes_le, p.kms_count_id.bytes_le)
    assert "Subscriptions" not in catalog.kms_applications.values()
    assert set(catalog.kms_applications.values()) == {"Windows", "Office"}
