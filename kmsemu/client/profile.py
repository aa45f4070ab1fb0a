"""A client machine's profile: what a Windows or Office install remembers, on disk.

One JSON file per profile under ``$KMSEMU_HOME/clients/``. Writes are atomic
(a temporary file, fsync, ``os.replace``), so a killed command leaves either
the old profile or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from kmsemu.client.licence import Licence, Policy
from kmsemu.errors import LocalError
from kmsemu.klp.messages import LicenseStatus

PROFILE_VERSION: Final = 2
MAX_EVENTS: Final = 500
#: Confirmation IDs a profile keeps (the newest), for VAMT-style local reactivation.
MAX_CONFIRMATION_IDS: Final = 20
#: The licensing applications a machine keeps a CMID for: Windows (every Windows edition,
#: client or server: one OS licence) and Office (every Office product on the machine).
WINDOWS: Final = "windows"
OFFICE: Final = "office"
COMPONENT_NAMES: Final = (
    "cpu",
    "board",
    "disk",
    "nic",
    "memory",
    "display",
    "bios",
    "os-disk-volume",
    "dock",
    "machine",
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ProfileError(LocalError):
    """A profile that cannot be used: a bad name, a damaged file, another version's."""

    def __init__(self, detail: str) -> None:
        super().__init__("bad_profile", detail)


#: What each field of a saved profile must hold (the annotations, as JSON decodes them).
_KINDS: Final[dict[str, tuple[type, ...]]] = {
    "str": (str,),
    "str | None": (str, type(None)),
    "bool": (bool,),
    "float": (int, float),
    "list[str]": (list,),
    "list[str] | None": (list, type(None)),
    "dict[str, Any]": (dict,),
    "list[dict[str, Any]]": (list,),
    "dict[str, str]": (dict,),
    "list[Install]": (list,),
}


def valid_profile_name(name: str) -> bool:
    """1-64 letters, digits, '.', '_' or '-', starting with a letter or digit."""
    return _NAME.fullmatch(name) is not None


def new_hardware(rng: random.Random) -> list[str]:
    """Ten random component values (``cpu:…``, ``board:…``…) for a new machine."""
    return [f"{name}:{rng.getrandbits(48):012x}" for name in COMPONENT_NAMES]


def application_of(family: str) -> str:
    """The licensing application of a catalog family: ``office``, else ``windows``."""
    return OFFICE if family == "office" else WINDOWS


@dataclass
class Install:
    """One installed product, as a PC's licensing service keeps it: key, licence, history.

    A machine has one Windows install (a new Windows key replaces the edition, keeping its
    licence's rearm count) and one install per Office product. An install outlives its key:
    after ``upk`` it keeps its licence (Unlicensed, its rearms) and its events.
    """

    application: str  # WINDOWS or OFFICE: whose CMID the requests carry
    product: str | None = None  # catalog key of the key installed last
    product_key: str | None = None  # the 25 normalised symbols; None: no key
    licence: Licence = field(default_factory=Licence)
    activation_hardware: list[str] | None = None
    last_kms: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    #: This product's own KMS host (slmgr /skms HOST ActID, ospp /sethst), before the
    #: machine's.
    kms_host: str | None = None

    def add_event(self, event: dict[str, Any]) -> None:
        """Record an event, keeping only the newest ``MAX_EVENTS``."""
        self.events.append(event)
        del self.events[:-MAX_EVENTS]

    def to_json(self) -> dict[str, Any]:
        """The install as the profile's ``installs`` list holds it."""
        data = dataclasses.asdict(self)
        data["licence"] = _licence_json(self.licence)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Install:
        """A saved install (``ProfileError`` when a field holds the wrong kind)."""
        data = dict(data)
        data["licence"] = _licence_from_json(data["licence"])
        _check_fields(cls, data)
        if data.get("application") not in (WINDOWS, OFFICE):
            raise ProfileError(f"application is {data.get('application')!r}")
        return cls(**data)


@dataclass
class Profile:
    """One client machine as saved: identity, hardware, installed products and settings."""

    name: str
    machine_name: str
    hardware: list[str]
    vm: bool = False
    #: What is installed, in the order it was first installed.
    installs: list[Install] = field(default_factory=list)
    #: The CMID of each licensing application (WINDOWS, OFFICE), and the one before a rearm
    #: or a clone's first request replaced it.
    cmids: dict[str, str] = field(default_factory=dict)
    previous_cmids: dict[str, str] = field(default_factory=dict)
    kms_host: str | None = None  # set by skms: host[:port]
    kms_domain: str | None = None  # set by skms-domain
    host_caching: bool = True
    cached_host: str | None = None  # address of the last host that worked
    cached_name: str | None = None  # its name:port as DNS gave it
    dns_servers: list[str] = field(default_factory=list)
    dns_suffixes: list[str] = field(default_factory=list)
    clock_offset: float = 0.0
    #: The MAK service (set by mak-url); None: KMSEMU_MAK_URL, else http://127.0.0.1:8688.
    mak_url: str | None = None
    #: Confirmation IDs deposited with atp, by installation ID, oldest first (VAMT's local
    #: reactivation: the same key on the same hardware takes its stored CID again, offline).
    confirmation_ids: dict[str, str] = field(default_factory=dict)

    @classmethod
    def new(cls, name: str, rng: random.Random) -> Profile:
        """A new machine: random hardware and Windows CMID, its name as the machine name."""
        return cls(
            name=name,
            machine_name=name.upper()[:15],
            hardware=new_hardware(rng),
            cmids={WINDOWS: str(uuid.UUID(int=rng.getrandbits(128), version=4))},
        )

    @property
    def cmid(self) -> str | None:
        """The Windows CMID (what ``--json`` has always called ``cmid``)."""
        return self.cmids.get(WINDOWS)

    def store_confirmation_id(self, iid: str, cid: str) -> None:
        """Keep a deposited CID for its IID, dropping the oldest past the limit."""
        self.confirmation_ids.pop(iid, None)
        self.confirmation_ids[iid] = cid
        for stale in list(self.confirmation_ids)[:-MAX_CONFIRMATION_IDS]:
            del self.confirmation_ids[stale]

    def to_json(self) -> dict[str, Any]:
        """The profile as its JSON file holds it, with the format version."""
        data = dataclasses.asdict(self)
        data["installs"] = [install.to_json() for install in self.installs]
        data["version"] = PROFILE_VERSION
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Profile:
        """A saved profile (one written before products, version 1, migrated); fields
        added since it was written take their defaults."""
        data = dict(data)
        version = data.pop("version", None)
        if version == 1:
            data = _from_version_1(data)
        elif version != PROFILE_VERSION:
            raise ProfileError("profile written by another kmsemu version")
        installs = data.get("installs", [])
        _check_fields(cls, data)
        if not all(isinstance(item, dict) for item in installs):
            raise ProfileError(f"installs is {installs!r}")
        data["installs"] = [Install.from_json(item) for item in installs]
        for name in ("cmids", "previous_cmids"):
            for application, cmid in data.get(name, {}).items():
                if application not in (WINDOWS, OFFICE) or not _is_guid(cmid):
                    raise ProfileError(f"{name}[{application!r}] is {cmid!r}")
        if not _finite(data.get("clock_offset", 0.0)):
            raise ProfileError(f"clock_offset is {data['clock_offset']!r:.40}")
        return cls(**data)


def _finite(number: float) -> bool:
    """A finite float, or an int one fits in (JSON's integers have no size limit)."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


#: A version-1 profile's fields that became its one install's (or its application's CMID).
_V1_INSTALL_FIELDS: Final = ("product", "product_key", "licence", "activation_hardware",
                             "last_kms", "events")  # fmt: skip


def _from_version_1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 profile (one product, one CMID) as version 2: its product becomes the
    one install, in the application its catalog family names, and keeps the CMID; a
    profile that never had a key keeps its licence (its rearms) as the Windows install."""
    from kmsemu.catalog import default_catalog  # only an old profile needs it
    from kmsemu.errors import ConfigError

    moved = {name: data.pop(name) for name in _V1_INSTALL_FIELDS if name in data}
    cmid, previous = data.pop("cmid"), data.pop("previous_cmid", None)
    application = WINDOWS
    if isinstance(moved.get("product"), str):
        # a product the catalog no longer has stays the Windows licence
        with contextlib.suppress(ConfigError):
            application = application_of(default_catalog().find(moved["product"]).family)
    data["cmids"] = {application: cmid}
    data["previous_cmids"] = {application: previous} if previous else {}
    data["installs"] = [{"application": application, **moved}]
    return data


def _is_guid(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _check_fields(cls: type, data: dict[str, Any]) -> None:
    """Each field ``data`` holds has the kind its annotation says (``ProfileError``)."""
    for f in dataclasses.fields(cls):
        kinds = _KINDS.get(str(f.type))
        value = data.get(f.name)
        if (
            f.name in data
            and kinds is not None
            and (not isinstance(value, kinds) or isinstance(value, bool) is not (bool in kinds))
        ):
            raise ProfileError(f"{f.name} is {value!r}")


def _licence_json(licence: Licence) -> dict[str, Any]:
    data = dataclasses.asdict(licence)
    data["status"] = int(licence.status)
    return data


def _licence_from_json(data: dict[str, Any]) -> Licence:
    data = dict(data)
    data["status"] = LicenseStatus(data["status"])
    data["policy"] = Policy(**data["policy"])
    return Licence(**data)


class ProfileStore:
    """Profiles in a directory, read and written whole."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, name: str) -> Path:
        """The profile's file; a name that is not a valid profile name is refused."""
        if not valid_profile_name(name):
            raise ProfileError(f"profile name {name!r}: use letters, digits, '.', '_' or '-'")
        return self.directory / f"{name}.json"

    def load(self, name: str, rng: random.Random | None = None) -> Profile:
        """The profile, or a new machine when it does not exist yet."""
        path = self.path(name)
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):  # saving says why it cannot be made
            return Profile.new(name, rng or random.Random())
        except OSError as exc:
            raise ProfileError(f"cannot read {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise ProfileError(f"profile {path} is damaged: not UTF-8 text") from exc
        try:
            profile = Profile.from_json(json.loads(text))
        except ProfileError as exc:
            raise ProfileError(f"profile {path} is damaged: {exc.detail}") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProfileError(f"profile {path} is damaged: {exc}") from exc
        except RecursionError:  # json nests by recursion: 100,000 arrays deep is not a profile
            raise ProfileError(f"profile {path} is damaged: nested too deeply") from None
        profile.name = name  # a copied file is a cloned machine under another name
        return profile

    def save(self, profile: Profile) -> None:
        """Write the profile atomically: the old file or the new one, never half."""
        import tempfile  # only a save needs it

        path = self.path(profile.name)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{profile.name}.", dir=self.directory)
        except OSError as exc:
            raise LocalError("write_failed", f"{self.directory}: {exc.strerror or exc}") from exc
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(profile.to_json(), out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise LocalError("write_failed", f"{path}: {exc.strerror or exc}") from exc
            raise
