"""The error registry and the exception tree.

Every error a user can meet has one stable code here, one message and one hint, in
one of three tables: activation HRESULTs (``HResult``, the Windows wording where
Windows has one), the HTTP services' string codes (``SERVICE_ERRORS``), and what this
machine decides by itself, in the CLI, the client machine and the configuration and
scenario readers (``LOCAL_ERRORS``). The particulars of one occurrence go in
``detail`` (printed in parentheses after the message) or in extra fields, never in a
reworded message. The CLI (``kmsemu.cli.common.KmsemuGroup``), the HTTP services, the
logs and ``docs/errors.md`` all read from these tables; ``lookup`` finds any code.

Exception tree::

    Exception
     +-- KmsemuError              every error a user can meet: code, message, detail,
     |    |                       hint, hresult?; the CLI prints it and exits 1
     |    +-- ActivationError     an HRESULT from the KMS host, or decided by the client
     |    |    +-- DiscoveryError      (kmsemu.client.discovery) DNS found no KMS host
     |    |         +-- UnresolvedHost     the skms name has no address in DNS
     |    +-- ServiceError        an HTTP service refuses: a SERVICE_ERRORS code and status
     |    +-- RemoteError         (mak.client) such a refusal as a client receives it, or
     |    |                       the service could not be reached (LOCAL_ERRORS)
     |    +-- ConfigError         wrong input: a catalog, lab.toml, a scenario, --db...
     |    |    +-- ZoneError           (kmsemu.dns.zone) a zone, SRV target or zone file
     |    +-- LocalError          what this machine could not do (listen, write, find
     |         |                  state) and a client machine's own refusals
     |         +-- ProfileError        (kmsemu.client.profile) a profile that cannot be used
     |
     |   Internal: answered on the wire, or turned into one of the above (or into a click
     |   usage error, exit 2) before a user could see them:
     +-- ValueError
     |    +-- PduError            (kmsemu.rpc.pdu) -> a DCE/RPC fault or a closed connection
     |    +-- NdrError            (kmsemu.rpc.ndr) -> nca_s_fault_ndr
     |    +-- MessageError        (kmsemu.klp.messages) -> 0x8007000D
     |    +-- TextFieldError      (kmsemu.wire) -> MessageError
     |    +-- IdError             (kmsemu.keys.activation_ids) -> installation_id_invalid
     |    +-- AddressError        (kmsemu.addresses) -> a usage error
     |    +-- SlmgrUsage          (kmsemu.cli.slmgr) -> a usage error
     |    +-- OsppUsage           (kmsemu.cli.ospp) -> a usage error
     +-- EnvelopeError            (kmsemu.klp.envelope) -> stub status 0x80070005 / 0x8007000D
     +-- _Unusable                (kmsemu.client.exchange) -> ActivationError 0xC004F074
     +-- WouldWait                (mak.store.base) -> the call runs again in a worker thread
     +-- _Malformed               (kmsemu.dns.update) -> the UPDATE's FORMERR
     +-- KeyError
          +-- TransitionError     (kmsemu.client.licence) an event the licence table lacks
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class HResult(IntEnum):
    """HRESULTs used by KLP/1 and the emulator (spec klp-v1.md section 5, behaviour.md)."""

    S_OK = 0x00000000
    ACCESS_DENIED = 0x80070005
    INVALID_DATA = 0x8007000D
    TIMEOUT = 0x800705B4
    RPC_SERVER_UNAVAILABLE = 0x800706BA
    CANNOT_CONNECT = 0x80072EFD
    DNS_SERVER_FAILURE = 0x8007232A
    DNS_NAME_DOES_NOT_EXIST = 0x8007232B
    DNS_NO_RECORDS = 0x8007251D
    GRACE_EXPIRED = 0xC004F009
    HARDWARE_OUT_OF_TOLERANCE = 0xC004F00F
    COUNT_INSUFFICIENT = 0xC004F038
    KMS_NOT_ENABLED = 0xC004F039
    PRODUCT_NOT_SERVED = 0xC004F042
    PRODUCT_KEY_INVALID = 0xC004F050
    PRODUCT_KEY_BLOCKED = 0xC004F051
    IID_CID_INVALID = 0xC004F04D
    TIMESTAMP_INVALID = 0xC004F06C
    NO_KMS_HOST = 0xC004F074
    MAK_INVALID = 0xC004C001
    MAK_BLOCKED = 0xC004C003
    KEY_UNLOCK_LIMIT = 0xC004C008
    MAK_LIMIT_EXCEEDED = 0xC004C020
    MAK_EXTENSION_LIMIT_EXCEEDED = 0xC004C021
    KEY_EXPIRED = 0xC004C031
    REARM_LIMIT_EXCEEDED = 0xC004D307


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What a code means: its one message, its hint (worded for the CLI) and the HRESULT a
    Windows client would show for it, where there is one."""

    message: str
    hint: str
    hresult: int | None = None


_INFO: dict[HResult, ErrorInfo] = {
    HResult.S_OK: ErrorInfo("The operation completed successfully.", ""),
    HResult.ACCESS_DENIED: ErrorInfo(
        "Access denied: the KMS host could not authenticate the request.",
        "Client and host must share a lab secret (--secret / KMSEMU_SECRET).",
    ),
    HResult.INVALID_DATA: ErrorInfo(
        "The data is invalid.",
        "The request envelope or plaintext is malformed; check the client against klp-v1.md.",
    ),
    HResult.TIMEOUT: ErrorInfo(
        "This operation returned because the timeout period expired.",
        "No DNS server answered in time; check 'kmsemu client dns --server' and that the "
        "server ('kmsemu dns serve') is running.",
    ),
    HResult.RPC_SERVER_UNAVAILABLE: ErrorInfo(
        "The RPC server is unavailable.",
        "Nothing answered at that address and port; is the host running and reachable?",
    ),
    HResult.CANNOT_CONNECT: ErrorInfo(
        "A connection with the server could not be established.",
        "Nothing answered at the MAK service URL; is 'kmsemu mak serve' running? "
        "See 'kmsemu client mak-url'.",
    ),
    HResult.DNS_SERVER_FAILURE: ErrorInfo(
        "DNS server failure.", "The DNS server could not answer the SRV query."
    ),
    HResult.DNS_NAME_DOES_NOT_EXIST: ErrorInfo(
        "DNS name does not exist.", "No _vlmcs._tcp record exists for the client's DNS suffix."
    ),
    HResult.DNS_NO_RECORDS: ErrorInfo(
        "No records found for given DNS query.", "The name exists but holds no SRV records."
    ),
    HResult.GRACE_EXPIRED: ErrorInfo(
        "The software Licensing Service reported that the grace period expired.",
        "Activate the product to leave Notification mode.",
    ),
    HResult.HARDWARE_OUT_OF_TOLERANCE: ErrorInfo(
        "The Software Licensing Service reported that the hardware ID binding is beyond the "
        "level of tolerance.",
        "The hardware changed significantly; activate again.",
    ),
    HResult.COUNT_INSUFFICIENT: ErrorInfo(
        "The count reported by your Key Management Service (KMS) is insufficient.",
        "The host has not yet counted enough machines (25 client PCs, or 5 servers/Office).",
    ),
    HResult.KMS_NOT_ENABLED: ErrorInfo(
        "The Key Management Service (KMS) is not enabled.",
        "kmsemu never decides it: a kmsemu KMS host is enabled while it serves, and a host "
        "that does not respond shows as 0xC004F074 with the cause (behaviour.md: every host "
        "failed). A host answers it only when forced ('kmsemu host fault set "
        "kms_not_enabled'), and a client shows that answer as 0xC004F074.",
    ),
    HResult.PRODUCT_NOT_SERVED: ErrorInfo(
        "The Software Licensing Service determined that the specified Key Management Service "
        "(KMS) cannot be used.",
        "This host's catalog does not serve the product; see 'kmsemu catalog'.",
    ),
    HResult.PRODUCT_KEY_INVALID: ErrorInfo(
        "The Software Licensing Service reported that the product key is invalid.",
        "Check the key with 'kmsemu keys check'.",
    ),
    HResult.IID_CID_INVALID: ErrorInfo(
        "The Software Licensing Service determined that the Installation ID (IID) or the "
        "Confirmation ID (CID) is invalid.",
        "Read the confirmation ID again (a check digit names each mistyped group); a CID "
        "made with another lab secret, or for another installation ID, matches nowhere.",
    ),
    HResult.PRODUCT_KEY_BLOCKED: ErrorInfo(
        "The Software Licensing Service reported that the product key is blocked.",
        "kmsemu never produces it: KMS client setup keys are public and never blocked, and a "
        "key blocked in the lab's MAK service ('kmsemu mak block') fails with the activation "
        "server's 0xC004C003 (mak_blocked), as a blocked MAK does.",
    ),
    HResult.TIMESTAMP_INVALID: ErrorInfo(
        "The activation request timestamp is invalid.",
        "Client and host clocks differ by more than 4 hours (compared in UTC).",
    ),
    HResult.NO_KMS_HOST: ErrorInfo(
        "No Key Management Service (KMS) could be contacted.",
        "Check the host address, that it is running, the lab secret and both clocks.",
    ),
    HResult.MAK_INVALID: ErrorInfo(
        "The activation server determined the specified product key is invalid.",
        "Check the key with 'kmsemu keys check'; the service knows only keys added to it.",
    ),
    HResult.MAK_BLOCKED: ErrorInfo(
        "The activation server determined the specified product key is blocked.",
        "An administrator blocked this key ('kmsemu mak unblock' lifts it).",
    ),
    HResult.KEY_UNLOCK_LIMIT: ErrorInfo(
        "The activation server reported that the product key has exceeded its unlock limit.",
        "A retail key activates one machine; a KMS host key 6 hosts, each 9 more times.",
    ),
    HResult.MAK_LIMIT_EXCEEDED: ErrorInfo(
        "The activation server reported that the Multiple Activation Key has exceeded its limit.",
        "Ask for an activation count increase.",
    ),
    HResult.MAK_EXTENSION_LIMIT_EXCEEDED: ErrorInfo(
        "The activation server reported that the Multiple Activation Key extension limit has "
        "been exceeded.",
        "The count increases granted so far are used up too; ask for another increase.",
    ),
    HResult.KEY_EXPIRED: ErrorInfo(
        "The activation server reported that time based activation attempted after end date.",
        "The key's expiry date has passed; ask for a new key.",
    ),
    HResult.REARM_LIMIT_EXCEEDED: ErrorInfo(
        "The Software Licensing Service reported that the rearm limit has been exceeded.", ""
    ),
}


def describe(code: int) -> ErrorInfo:
    """Message and hint for an HRESULT; unknown codes get a generic message."""
    try:
        return _INFO[HResult(code)]
    except ValueError:
        return ErrorInfo(f"Unknown error 0x{code & 0xFFFFFFFF:08X}.", "")


def hresult_name(code: int) -> str:
    """The HResult member's name (``COUNT_INSUFFICIENT``), else the code in hex."""
    try:
        return HResult(code).name
    except ValueError:
        return f"0x{code & 0xFFFFFFFF:08X}"


def format_hresult(code: int) -> str:
    """An HRESULT as slmgr shows it: ``0x`` and eight upper-case hex digits."""
    return f"0x{code & 0xFFFFFFFF:08X}"


class KmsemuError(Exception):
    """Root of every error a user can meet: a registry ``code`` (its message, hint and
    HRESULT come from the registry) and the particulars of this occurrence: ``detail``,
    extra ``fields`` of the JSON error object, and for the CLI the ``output`` fields a
    command prints beside ``error`` with --json and the ``notes`` it prints after the hint.
    """

    code: str = "internal"

    def __init__(
        self,
        detail: str = "",
        *,
        code: str | None = None,
        output: Mapping[str, Any] | None = None,
        notes: Sequence[str] = (),
        **fields: Any,
    ) -> None:
        if code is not None:
            self.code = code
        self.detail = detail
        self.fields = fields
        self.output = dict(output or {})
        self.notes = list(notes)
        super().__init__(self.text)

    def __str__(self) -> str:
        return self.text

    @property
    def info(self) -> ErrorInfo:
        """The registry's entry for the code; a generic message for a code it lacks."""
        return lookup(self.code) or ErrorInfo(f"Unknown error {self.code!r}.", "")

    @property
    def message(self) -> str:
        """The registry's message for the code, exactly."""
        return self.info.message

    @property
    def text(self) -> str:
        """The message with the detail: what the CLI prints after ``Error:``."""
        return f"{self.message} ({self.detail})" if self.detail else self.message

    @property
    def hint(self) -> str:
        """The registry's hint, worded for the command line."""
        return self.info.hint

    @property
    def hresult(self) -> int | None:
        """The HRESULT the registry gives the code, if any."""
        return self.info.hresult

    def to_json(self, *, http: bool = False) -> dict[str, Any]:
        """``{"error": {"code", "message", "hint", "hresult"?, ...fields}}``, after the
        ``output`` fields (the CLI's --json; ``http``: as an HTTP service answers)."""
        error: dict[str, Any] = {"code": self.code, "message": self.text, "hint": self.hint}
        if self.hresult is not None:
            error["hresult"] = format_hresult(self.hresult)
        error.update(self.fields)
        return {"error": error} if http else {**self.output, "error": error}


class ConfigError(KmsemuError):
    """Wrong input: a catalog entry, the lab's configuration, a scenario, a flag's value
    that only the program can check (``--db``); codes of ``LOCAL_ERRORS``."""

    code = "config"


class LocalError(KmsemuError):
    """What this machine could not do (listen, write, find state), and a client
    machine's own refusals; a code of ``LOCAL_ERRORS`` is required."""

    def __init__(self, code: str, detail: str = "", **kwargs: Any) -> None:
        super().__init__(detail, code=code, **kwargs)


class ActivationError(KmsemuError):
    """An activation failed with an HRESULT (from the host or decided by the client);
    ``code`` is the HRESULT's name in lower case, unless a more precise code is given
    (``key_unknown``, ``no_confirmation_id``: the HRESULT is the same)."""

    def __init__(
        self,
        hresult: int,
        detail: str = "",
        *,
        cause: int | None = None,
        code: str | None = None,
        **kwargs: Any,
    ) -> None:
        self._hresult = hresult
        self.cause = cause
        super().__init__(detail, code=code or hresult_name(hresult).lower(), **kwargs)

    @property
    def info(self) -> ErrorInfo:
        """The entry for the code when it has this HRESULT, else the HRESULT's own."""
        info = lookup(self.code)
        if info is None or info.hresult != self._hresult:
            info = describe(self._hresult)
        return info

    @property
    def hresult(self) -> int:
        """The HRESULT the activation failed with."""
        return self._hresult


@dataclass(frozen=True, slots=True)
class ServiceErrorInfo:
    """One error of the HTTP services (MAK, portal): HTTP status, wording, and the HRESULT a
    Windows client would show for it, where there is one."""

    status: int
    #: The wording; ``{name}`` is filled from the error's field of that name (behaviour.md's
    #: "The maximum is <x> user licenses.").
    message: str
    #: The hint in an HTTP answer, which may name JSON fields and headers.
    hint: str
    hresult: int | None = None
    #: A row of behaviour.md's product-key redemption table: its wording is kept exactly
    #: (particulars go to ``detail``) and a portal fault can force it.
    redemption: bool = False
    #: The hint as the CLI prints it (flags and commands, not fields and headers); empty:
    #: the HTTP hint reads right on the command line too.
    cli_hint: str = ""
    #: Other wordings of the same code, by name (behaviour.md gives ``invalid_key`` two;
    #: ``admin_required`` names what the caller's role may not do).
    variants: Mapping[str, str] = field(default_factory=dict)


def _redemption(
    status: int,
    message: str,
    hint: str,
    cli_hint: str = "",
    variants: Mapping[str, str] | None = None,
) -> ServiceErrorInfo:
    return ServiceErrorInfo(
        status, message, hint, redemption=True, cli_hint=cli_hint, variants=variants or {}
    )


def _activation(
    status: int, hresult: HResult, hint: str = "", cli_hint: str = ""
) -> ServiceErrorInfo:
    info = _INFO[hresult]
    return ServiceErrorInfo(
        status, info.message, hint or info.hint, int(hresult), cli_hint=cli_hint
    )


_NOT_THE_SERVICE = "Does --url name the MAK service ('kmsemu mak serve')?"

#: Every error code the HTTP services answer with (``{"error": {"code", ...}}``).
SERVICE_ERRORS: dict[str, ServiceErrorInfo] = {
    "key_malformed": _activation(
        400,
        HResult.MAK_INVALID,
        "The key is not well formed; see 'problems' and 'candidates'.",
        "The key is not well formed; 'kmsemu keys check KEY' says what is wrong and which "
        "keys were meant.",
    ),
    "key_unknown": _activation(
        404, HResult.MAK_INVALID, "The key is well formed but was never added to this service."
    ),
    "key_wrong_type": _activation(
        400,
        HResult.MAK_INVALID,
        "Only MAK, retail and KMS host keys activate here; a KMS client setup key activates "
        "against a KMS host.",
    ),
    "key_blocked": _activation(403, HResult.MAK_BLOCKED),
    "key_expired": _activation(410, HResult.KEY_EXPIRED),
    "mak_limit_exceeded": _activation(409, HResult.MAK_LIMIT_EXCEEDED),
    "mak_extension_limit_exceeded": _activation(409, HResult.MAK_EXTENSION_LIMIT_EXCEEDED),
    "key_unlock_limit": _activation(409, HResult.KEY_UNLOCK_LIMIT),
    "installation_id_invalid": ServiceErrorInfo(
        400,
        "The installation ID is not valid.",
        "It is nine groups of seven digits; 'failed_groups' names the groups to read again.",
        cli_hint="It is nine groups of seven digits; read the groups named again.",
    ),
    "key_exists": ServiceErrorInfo(
        409, "This key is already registered.", "Use 'kmsemu mak increase' to raise its limit."
    ),
    "unauthorized": ServiceErrorInfo(
        401,
        "An administrator token is required.",
        "Send 'Authorization: Bearer <token>' (--admin-token or KMSEMU_ADMIN_TOKEN).",
        cli_hint="Give --admin-token or set KMSEMU_ADMIN_TOKEN (a local 'kmsemu mak serve' "
        "keeps its token in $KMSEMU_HOME/mak/admin-token).",
    ),
    "forbidden": ServiceErrorInfo(
        403, "The administrator token is wrong.", "Use the token the service was started with."
    ),
    "not_found": ServiceErrorInfo(
        404, "No such resource.", "See /openapi.json for the routes.", cli_hint=_NOT_THE_SERVICE
    ),
    "method_not_allowed": ServiceErrorInfo(
        405, "Method not allowed.", "See /openapi.json for the routes.", cli_hint=_NOT_THE_SERVICE
    ),
    "bad_json": ServiceErrorInfo(
        400,
        "The request body is not a JSON object.",
        "Send one JSON object with Content-Type: application/json.",
        cli_hint="Does --url name a service of this kmsemu version?",
    ),
    "invalid_field": ServiceErrorInfo(
        422,
        "A field of the request is missing or invalid.",
        "See 'field' and /openapi.json.",
        cli_hint="Check the value of the argument or option of "
        "that name (see the command's --help).",
    ),
    "body_too_large": ServiceErrorInfo(
        413,
        "The request body is too large.",
        "Split the request (proxy activation takes 1,000 IDs per call).",
        cli_hint="Split the file: proxy-activate takes 1,000 installation IDs per call.",
    ),
    "unavailable": ServiceErrorInfo(
        503,
        "The service is busy; try again.",
        "The database cannot serve now (busy past its timeout, a full disk, an I/O error): "
        "the detail says which; it serves again once that passes.",
    ),
    "internal": ServiceErrorInfo(
        500,
        "Internal error.",
        "See the service log.",
        cli_hint="A bug in kmsemu: please report it with the command that failed.",
    ),
    # -- the licensing portal: product-key redemption (behaviour.md's table) --------------------
    "invalid_key": _redemption(
        400,
        "The product key you entered isn't valid. Try entering it again.",
        "Check the key for 0/O, 5/S and 1/l/I mix-ups; 'problems' and 'candidates' say what "
        "is wrong and which keys were meant.",
        "Check the key for 0/O, 5/S and 1/l/I mix-ups ('kmsemu keys check KEY' says what is "
        "wrong and which keys were meant).",
        {"not_subscription": "This product key isn't valid. Please enter a different product key."},
    ),
    "already_entered": _redemption(
        409,
        "You have already entered this product key. Enter a different key.",
        "This organisation redeemed the key before; its subscription is in 'kmsemu portal "
        "subscriptions'.",
    ),
    "expired": _redemption(
        410,
        "The product key you entered has expired. Enter a different key.",
        "Ask the seller for a key that is still valid.",
    ),
    "already_used": _redemption(
        409,
        "This product key has already been used. Please enter a different product key.",
        "Another organisation redeemed it; a key is redeemed once.",
    ),
    "busy": _redemption(
        503,
        "Sorry, we can't process your request right now. Please wait a few minutes and try again.",
        "Wait as long as Retry-After says and try again; if it still fails after 15 minutes, "
        "contact support.",
        "If it still fails after 15 minutes, contact support.",  # the CLI says when to retry
    ),
    "not_available": _redemption(
        409,
        "The requested subscription is not available.",
        "'reason' says why: offer_not_available, not_in_country or trial_used.",
        "The reason says why: the key's product is not an offer, the offer is not sold in "
        "the organisation's country, or its trial was used.",
    ),
    "too_many_licences": _redemption(
        422,
        "You've added more user licenses than this offer allows. The maximum is "
        "{maximum} user licenses.",
        "Redeem or buy fewer licences, or choose an offer with a higher maximum.",
    ),
    "admin_required": _redemption(
        403,
        "You must be a global or billing admin to redeem a product key.",
        "Sign in as a global admin or billing admin of the organisation.",
        "Give --token of a global or billing admin of the organisation.",
        {
            "buy": "You must be a global or billing admin to buy subscriptions.",
            "assign": "You must be a global or billing admin to assign licences.",
            "unassign": "You must be a global or billing admin to remove licences.",
            "add_user": "You must be a global admin to add users.",
        },
    ),
    "account_not_created": _redemption(
        503,
        "Sorry, we can't create your account right now.",
        "The organisation and its admin were created but the key was not redeemed; redeem it "
        "again into the organisation ('org', 'user' and 'token' in this error).",
        "The organisation and its admin were created but the key was not redeemed; redeem "
        "it again into the organisation, with the admin's token.",
    ),
    "order_not_processed": _redemption(
        503,
        "Your order can't be processed.",
        "Nothing was charged and the key was not redeemed; try again.",
    ),
    # -- the licensing portal: everything else ---------------------------------------------------
    "login_required": ServiceErrorInfo(
        401,
        "Sign in first: a user token is required.",
        "Send 'Authorization: Bearer <token>' (--token or KMSEMU_PORTAL_TOKEN), the token "
        "'kmsemu portal user add' printed.",
        cli_hint="Give --token (or set KMSEMU_PORTAL_TOKEN): the token 'kmsemu portal user "
        "add' printed.",
    ),
    "token_unknown": ServiceErrorInfo(
        403, "No user has this token.", "Use the token 'kmsemu portal user add' printed."
    ),
    "wrong_org": ServiceErrorInfo(
        403,
        "This token belongs to a user of another organisation.",
        "Use a token of a user of this organisation.",
    ),
    "unknown_org": ServiceErrorInfo(404, "No such organisation.", "See 'kmsemu portal org list'."),
    "unknown_user": ServiceErrorInfo(
        404, "No such user in this organisation.", "See 'kmsemu portal users ORG'."
    ),
    "unknown_offer": ServiceErrorInfo(404, "No such offer.", "See 'kmsemu portal offers'."),
    "org_exists": ServiceErrorInfo(
        409, "An organisation with this name exists.", "Choose another name."
    ),
    "user_exists": ServiceErrorInfo(
        409, "A user with this name exists in the organisation.", "Choose another name."
    ),
    "no_free_licences": ServiceErrorInfo(
        409,
        "There are no free licences for {offer}: all {licences} are assigned.",
        "Buy more licences ('kmsemu portal buy') or remove one from another user "
        "('kmsemu portal unassign').",
        variants={"none_bought": "The organisation has no {offer} subscription."},
    ),
    "already_assigned": ServiceErrorInfo(
        409, "The user already has a licence of this offer.", "Nothing to do."
    ),
    "not_assigned": ServiceErrorInfo(
        409, "The user has no licence of this offer.", "See 'kmsemu portal users ORG'."
    ),
}

#: The redemption errors of behaviour.md's table, in its order: what a fault can force.
REDEMPTION_ERRORS: tuple[str, ...] = tuple(
    code for code, info in SERVICE_ERRORS.items() if info.redemption
)


class ServiceError(KmsemuError):
    """An HTTP service refused a request; ``code`` is a key of ``SERVICE_ERRORS``. Extra
    keyword fields go in the answer's error object and fill the message's ``{name}``s;
    ``variant`` picks one of the registry's other wordings of the code."""

    def __init__(
        self,
        code: str,
        detail: str = "",
        *,
        variant: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.entry = SERVICE_ERRORS[code]
        self._status = status
        #: HTTP headers the answer carries (``Retry-After``).
        self.headers = headers or {}
        wording = self.entry.variants[variant] if variant else self.entry.message
        self._message = wording.format_map(_Fill(extra))
        super().__init__(detail, code=code)
        # a redemption error's detail is a field: its message is behaviour.md's, exactly
        self.fields = {"detail": detail, **extra} if self.entry.redemption and detail else extra

    @property
    def message(self) -> str:
        """The registry's wording (or variant), its ``{name}``s filled from the fields."""
        return self._message

    @property
    def text(self) -> str:
        """The message with the detail; a redemption error's message alone, as worded."""
        # a redemption error keeps behaviour.md's wording exactly: its detail is a field
        return self._message if self.entry.redemption else super().text

    @property
    def hint(self) -> str:
        """The hint for the command line: the CLI wording if the registry has one."""
        return self.entry.cli_hint or self.entry.hint

    @property
    def hresult(self) -> int | None:
        """The HRESULT a Windows client would show for the code, if any."""
        return self.entry.hresult

    @property
    def extra(self) -> dict[str, Any]:
        """The fields of the answer's error object (the keyword fields given)."""
        return self.fields

    @property
    def status(self) -> int:
        """The HTTP status: the one given, else the registry's for the code."""
        return self._status or self.entry.status

    def to_json(self, *, http: bool = True) -> dict[str, Any]:
        """The HTTP answer's body (``http=False``: as the CLI prints it, its hint)."""
        body = super().to_json(http=http)
        if http:
            body["error"]["hint"] = self.entry.hint
        return body


class _Fill(dict[str, Any]):
    """``str.format_map`` fields; one the raise site did not give shows as ``<name>``."""

    def __missing__(self, key: str) -> str:
        return f"<{key}>"


#: Every code decided on this machine: by the CLI, a client machine, the readers of
#: catalogs, lab.toml and scenarios, and the MAK service's client.
LOCAL_ERRORS: dict[str, ErrorInfo] = {
    # -- wrong input (ConfigError) -------------------------------------------------------------
    "config": ErrorInfo(
        "The configuration is invalid.",
        "Check the option or file named (see the command's --help).",
    ),
    "bad_catalog": ErrorInfo(
        "The catalog is invalid.",
        "Fix the entry named; 'kmsemu catalog --file FILE' checks a catalog file.",
    ),
    "unknown_product": ErrorInfo(
        "No such product in the catalog.", "'kmsemu catalog' lists the products by key and name."
    ),
    "config_invalid": ErrorInfo(
        "The lab configuration file is invalid.",
        "Fix the [lab] key named (docs/lab.md lists them).",
    ),
    "scenario_invalid": ErrorInfo(
        "The scenario is invalid.", "Fix the entry named (docs/sim.md describes scenario files)."
    ),
    "unknown_scenario": ErrorInfo(
        "No such scenario.",
        "Give a scenario file (.toml) or a built-in name from 'kmsemu sim list'.",
    ),
    "zone_invalid": ErrorInfo(
        "The DNS zone data is invalid.",
        "Check --zone, --srv, --a and the zone file ('kmsemu dns serve --help').",
    ),
    # -- what this machine could not do (LocalError) -------------------------------------------
    "listen_failed": ErrorInfo(
        "Cannot listen on the address.",
        "Another program may hold the port, or a port below 1024 needs "
        "privileges; choose another with --listen or --port.",
    ),
    "no_state": ErrorInfo(
        "No KMS host state was found.",
        "Start a host with 'kmsemu host serve' (or 'kmsemu lab'), or name "
        "its directory with --state.",
    ),
    "lab_failed": ErrorInfo(
        "The lab could not start.",
        "A port in use moves with --kms-listen, --dns-listen or --http-listen.",
    ),
    "sim_failed": ErrorInfo(
        "The simulated network could not start.",
        "--network needs free ports on 127.0.0.1; without it the simulator needs none.",
    ),
    "database_unavailable": ErrorInfo(
        "The database cannot be opened.",
        "Check --db (sqlite:///PATH or postgresql://...), the "
        "file's permissions, or that PostgreSQL is running.",
    ),
    "write_failed": ErrorInfo(
        "Cannot write there.",
        "Check the path, its permissions and the free space (state lives in $KMSEMU_HOME).",
    ),
    # -- a client machine (kmsemu client VERB) -------------------------------------------------
    "bad_profile": ErrorInfo(
        "The client profile cannot be used.",
        "Its file in $KMSEMU_HOME/clients is damaged or from another "
        "version: delete it (a new machine starts), or use another "
        "--profile.",
    ),
    "clock_out_of_range": ErrorInfo(
        "The profile's clock cannot be moved there.",
        "It stays between the years 1970 and 2999 (UTC); move it by less, or set it with --at.",
    ),
    "product_key_not_found": ErrorInfo(
        "Product key not found.",
        "Install one with 'kmsemu client ipk KEY' ('kmsemu "
        "keys setup-keys' lists the KMS client setup keys).",
    ),
    "product_not_found": ErrorInfo(
        "Product not found.",
        "The Activation ID names no licence of this machine: 'kmsemu slmgr /dlv all' shows "
        "them with their Activation IDs.",
    ),
    "no_confirmation_id": ErrorInfo(
        _INFO[HResult.IID_CID_INVALID].message,
        "Give the confirmation ID ('kmsemu client atp CID'); a CID is kept only once one was "
        "deposited for this installation ID.",
        HResult.IID_CID_INVALID,
    ),
    "confirmation_id_invalid": ErrorInfo(
        _INFO[HResult.IID_CID_INVALID].message,
        _INFO[HResult.IID_CID_INVALID].hint,
        HResult.IID_CID_INVALID,
    ),
    # -- a typed product key (kmsemu keys check; keys.md's problem codes) -----------------------
    "wrong_length": ErrorInfo(
        "The key has the wrong length.", "A key is 25 characters, five groups of five."
    ),
    "invalid_character": ErrorInfo(
        "The key has characters outside the key alphabet.",
        "Keys use no vowels and none of 0 1 5 L N S Z: check for 0/O, 5/S and 1/l/I mix-ups.",
    ),
    "out_of_range": ErrorInfo(
        "This is not a key: its value is out of range.", "Check that the whole key was copied."
    ),
    "unknown_type": ErrorInfo(
        "This is not a key: its key type is unknown.", "Check that the whole key was copied."
    ),
    "check_failed": ErrorInfo(
        "A character of the key is mistyped.",
        "The keys it most likely was are listed after 'Did you mean'.",
    ),
    # -- the MAK service's client (RemoteError) ------------------------------------------------
    "proxy_refused": ErrorInfo(
        "The service refused some of the installation IDs.",
        "Each refused ID is listed with its error; fix those and send "
        "them again (the confirmed ones count once).",
    ),
    "unreachable": ErrorInfo(
        _INFO[HResult.CANNOT_CONNECT].message,
        "Nothing answered at the service URL; is 'kmsemu mak serve' "
        "running? See --url (or 'kmsemu client mak-url').",
        HResult.CANNOT_CONNECT,
    ),
    "bad_response": ErrorInfo(
        "The service's answer cannot be read.",
        "Does --url name the MAK service ('kmsemu mak serve') of this kmsemu version?",
    ),
}


def lookup(code: str) -> ErrorInfo | None:
    """What ``code`` means, from whichever table holds it (the hint worded for the CLI);
    None for a code of no table."""
    local = LOCAL_ERRORS.get(code)
    if local is not None:
        return local
    service = SERVICE_ERRORS.get(code)
    if service is not None:
        return ErrorInfo(service.message, service.cli_hint or service.hint, service.hresult)
    if code != code.lower():
        return None
    try:
        hresult = HResult[code.upper()]
    except KeyError:
        return None
    return ErrorInfo(_INFO[hresult].message, _INFO[hresult].hint, int(hresult))


def all_codes() -> list[str]:
    """Every code of the registry: HRESULT names, service codes, local codes."""
    return list(
        dict.fromkeys([*(h.name.lower() for h in HResult if h), *SERVICE_ERRORS, *LOCAL_ERRORS])
    )


def markdown_table() -> str:
    """The registry as the Markdown page ``docs/errors.md`` (kept equal by a test)."""
    lines = [
        "# Errors",
        "",
        "Generated from `kmsemu/errors.py` with `python -m kmsemu.errors > docs/errors.md`;",
        "a test keeps the two equal.",
        "",
        "## Activation HRESULTs",
        "",
        "JSON output names each by `error.code` (the lower-case name) and `error.hresult`.",
        "",
        "| HRESULT | code | message | hint |",
        "|---|---|---|---|",
    ]
    for code in HResult:
        info = _INFO[code]
        lines.append(
            f"| {format_hresult(code)} | `{code.name.lower()}` | {info.message} | {info.hint} |"
        )
    lines += [
        "",
        "## Where the host answers with what",
        "",
        "| situation | what the client gets |",
        "|---|---|",
        "| envelope shorter than 40 bytes, wrong magic, major version not 1 | stub status "
        "0x8007000D, no envelope |",
        "| unknown key id, or a tag that verifies under none of its secrets | stub status "
        "0x80070005, no envelope |",
        "| plaintext invalid (short, status > 6, nil CMID, bad name) | encrypted response, "
        "status 0x8007000D |",
        "| product not in the host's catalog | encrypted response, status 0xC004F042 |",
        "| request time more than 4 h from the host clock | encrypted response, status "
        "0xC004F06C |",
        "| success below the client's threshold | status 0; the client reports 0xC004F038 |",
        "| no usable response at all (refused, closed, wrong secret, bad reply) | the client "
        "reports 0xC004F074 with the cause |",
        "",
        "## HTTP service errors (MAK service, portal)",
        "",
        'Bodies are `{"error": {"code", "message", "hint", "hresult"?}}`;',
        "the CLI prints the same object with `--json` and exits 1, with its own hint where",
        "one is given. `{name}` in a message is the error's field of that name; a code with",
        "more than one wording names each other wording (`variant`).",
        "",
        "| code | HTTP | HRESULT | message | hint |",
        "|---|---|---|---|---|",
        *(_service_row(code, info) for code, info in SERVICE_ERRORS.items()),
        "",
        "## Local errors (CLI, client machine, configuration, scenarios)",
        "",
        "Decided on this machine. The CLI prints `Error: [HRESULT ]message (detail)` and the",
        'hint on stderr, or with `--json` `{"error": {"code", "message", "hint", "hresult"?}}`',
        "on stdout, and exits 1; a bad option value is a usage error instead (exit 2).",
        "",
        "| code | HRESULT | message | hint |",
        "|---|---|---|---|",
        *(
            f"| `{code}` | {format_hresult(info.hresult) if info.hresult is not None else ''} | "
            f"{info.message} | {info.hint} |"
            for code, info in LOCAL_ERRORS.items()
        ),
        "",
        "## DCE/RPC faults",
        "",
        "| status | name | when | connection |",
        "|---|---|---|---|",
        "| 0x1C010003 | `nca_s_unk_if` | REQUEST before a BIND, or on a context not accepted "
        "| stays open |",
        "| 0x1C010002 | `nca_s_op_rng_error` | opnum other than 0 | stays open |",
        "| 0x000006F7 | `nca_s_fault_ndr` | stub data that does not parse | stays open |",
        "| 0x1C01000B | `nca_s_proto_error` | PDU type not served, REQUEST with "
        "authentication, reassembly errors | closed |",
        "",
        "Invalid headers (version, byte order, lengths) and a peer closing mid-PDU close the",
        "connection without a reply; every other connection keeps being served.",
        "",
    ]
    return "\n".join(lines)


def _service_row(code: str, info: ServiceErrorInfo) -> str:
    hresult = format_hresult(info.hresult) if info.hresult is not None else ""
    message = "<br>".join(
        [info.message, *(f"or (`{name}`): {text}" for name, text in info.variants.items())]
    )
    hint = info.hint + (f"<br>CLI: {info.cli_hint}" if info.cli_hint else "")
    return f"| `{code}` | {info.status} | {hresult} | {message} | {hint} |"


if __name__ == "__main__":
    print(markdown_table(), end="")
