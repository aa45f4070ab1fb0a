"""The HRESULT registry and the exception root.

Every activation outcome a user can meet has one stable code here, one
message (the Windows wording where Windows has one) and one hint. The CLI,
the logs and the docs (``docs/errors.md``) all read from this table.

Exception tree::

    KmsemuError                 (root; carries a stable ``code``)
     +-- ActivationError        (an HRESULT came back or was decided locally)
     +-- ConfigError            (bad configuration: catalog, flags, state dir)
     +-- ServiceError           (an HTTP service refused: a string code of SERVICE_ERRORS)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class HResult(IntEnum):
    """HRESULTs used by KLP/1 and the emulator (spec klp-v1.md section 5, behaviour.md)."""

    S_OK = 0x00000000
    ACCESS_DENIED = 0x80070005
    INVALID_DATA = 0x8007000D
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
    message: str
    hint: str


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
        "The Key Management Service (KMS) is not enabled.", "The KMS host did not respond."
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
        "The Software Licensing Service reported that the product key is blocked.", ""
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
    try:
        return HResult(code).name
    except ValueError:
        return f"0x{code & 0xFFFFFFFF:08X}"


def format_hresult(code: int) -> str:
    return f"0x{code & 0xFFFFFFFF:08X}"


class KmsemuError(Exception):
    """Root of every error kmsemu raises on purpose."""

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(KmsemuError):
    """Bad configuration: a catalog entry, a flag value, a state directory."""

    code = "config"


class ActivationError(KmsemuError):
    """An activation failed with an HRESULT (from the host or decided by the client)."""

    def __init__(self, hresult: int, detail: str = "", *, cause: int | None = None) -> None:
        info = describe(hresult)
        message = info.message if not detail else f"{info.message} ({detail})"
        super().__init__(message, code=hresult_name(hresult).lower())
        self.hresult = hresult
        self.detail = detail
        self.cause = cause


@dataclass(frozen=True, slots=True)
class ServiceErrorInfo:
    """One error of the HTTP services (MAK, portal): HTTP status, wording, and the HRESULT a
    Windows client would show for it, where there is one."""

    status: int
    message: str
    hint: str
    hresult: int | None = None
    #: A row of behaviour.md's product-key redemption table: its wording is kept exactly
    #: (particulars go to ``detail``) and a portal fault can force it.
    redemption: bool = False


def _redemption(status: int, message: str, hint: str) -> ServiceErrorInfo:
    return ServiceErrorInfo(status, message, hint, redemption=True)


def _activation(status: int, hresult: HResult, hint: str = "") -> ServiceErrorInfo:
    info = _INFO[hresult]
    return ServiceErrorInfo(status, info.message, hint or info.hint, int(hresult))


#: Every error code the HTTP services answer with (``{"error": {"code", ...}}``).
SERVICE_ERRORS: dict[str, ServiceErrorInfo] = {
    "key_malformed": _activation(
        400, HResult.MAK_INVALID, "The key is not well formed; see 'problems' and 'candidates'."
    ),
    "key_unknown": _activation(
        404, HResult.MAK_INVALID, "The key is well formed but was never added to this service."
    ),
    "key_wrong_type": _activation(
        400, HResult.MAK_INVALID,
        "Only MAK, retail and KMS host keys activate here; a KMS client setup key activates "
        "against a KMS host.",
    ),
    "key_blocked": _activation(403, HResult.MAK_BLOCKED),
    "key_expired": _activation(410, HResult.KEY_EXPIRED),
    "mak_limit_exceeded": _activation(409, HResult.MAK_LIMIT_EXCEEDED),
    "mak_extension_limit_exceeded": _activation(409, HResult.MAK_EXTENSION_LIMIT_EXCEEDED),
    "key_unlock_limit": _activation(409, HResult.KEY_UNLOCK_LIMIT),
    "installation_id_invalid": ServiceErrorInfo(
        400, "The installation ID is not valid.",
        "It is nine groups of seven digits; 'failed_groups' names the groups to read again.",
    ),
    "key_exists": ServiceErrorInfo(409, "This key is already registered.",
                                   "Use 'kmsemu mak increase' to raise its limit."),
    "unauthorized": ServiceErrorInfo(
        401, "An administrator token is required.",
        "Send 'Authorization: Bearer <token>' (--admin-token or KMSEMU_ADMIN_TOKEN).",
    ),
    "forbidden": ServiceErrorInfo(403, "The administrator token is wrong.",
                                  "Use the token the service was started with."),
    "not_found": ServiceErrorInfo(404, "No such resource.", "See /openapi.json for the routes."),
    "method_not_allowed": ServiceErrorInfo(405, "Method not allowed.",
                                           "See /openapi.json for the routes."),
    "bad_json": ServiceErrorInfo(400, "The request body is not a JSON object.",
                                 "Send one JSON object with Content-Type: application/json."),
    "invalid_field": ServiceErrorInfo(422, "A field of the request is missing or invalid.",
                                      "See 'field' and /openapi.json."),
    "body_too_large": ServiceErrorInfo(413, "The request body is too large.",
                                       "Split the request (proxy activation takes 1,000 IDs "
                                       "per call)."),
    "unavailable": ServiceErrorInfo(503, "The service is busy; try again.",
                                    "The database did not answer in time."),
    "internal": ServiceErrorInfo(500, "Internal error.", "See the service log."),
    # -- the licensing portal: product-key redemption (behaviour.md's table) --------------------
    "invalid_key": _redemption(
        400, "The product key you entered isn't valid. Try entering it again.",
        "Check the key for 0/O, 5/S and 1/l/I mix-ups; 'problems' and 'candidates' say what "
        "is wrong and which keys were meant.",
    ),
    "already_entered": _redemption(
        409, "You have already entered this product key. Enter a different key.",
        "This organisation redeemed the key before; its subscription is in 'kmsemu portal "
        "subscriptions'.",
    ),
    "expired": _redemption(410, "The product key you entered has expired. Enter a "
                                "different key.", "Ask the seller for a key that is still valid."),
    "already_used": _redemption(
        409, "This product key has already been used. Please enter a different product key.",
        "Another organisation redeemed it; a key is redeemed once.",
    ),
    "busy": _redemption(
        503, "Sorry, we can't process your request right now. Please wait a few minutes and "
        "try again.",
        "Wait as long as Retry-After says and try again; if it still fails after 15 minutes, "
        "contact support.",
    ),
    "not_available": _redemption(
        409, "The requested subscription is not available.",
        "'reason' says why: offer_not_available, not_in_country or trial_used.",
    ),
    "too_many_licences": _redemption(
        422, "You've added more user licenses than this offer allows.",
        "Redeem or buy fewer licences, or choose an offer with a higher maximum.",
    ),
    "admin_required": _redemption(
        403, "You must be a global or billing admin to redeem a product key.",
        "Sign in as a global admin or billing admin of the organisation.",
    ),
    "account_not_created": _redemption(
        503, "Sorry, we can't create your account right now.",
        "The organisation and its admin were created but the key was not redeemed; redeem it "
        "again into the organisation ('org', 'user' and 'token' in this error).",
    ),
    "order_not_processed": _redemption(
        503, "Your order can't be processed.",
        "Nothing was charged and the key was not redeemed; try again.",
    ),
    # -- the licensing portal: everything else ---------------------------------------------------
    "login_required": ServiceErrorInfo(
        401, "Sign in first: a user token is required.",
        "Send 'Authorization: Bearer <token>' (--token or KMSEMU_PORTAL_TOKEN), the token "
        "'kmsemu portal user add' printed.",
    ),
    "token_unknown": ServiceErrorInfo(403, "No user has this token.",
                                      "Use the token 'kmsemu portal user add' printed."),
    "wrong_org": ServiceErrorInfo(403, "This token belongs to a user of another organisation.",
                                  "Use a token of a user of this organisation."),
    "unknown_org": ServiceErrorInfo(404, "No such organisation.",
                                    "See 'kmsemu portal org list'."),
    "unknown_user": ServiceErrorInfo(404, "No such user in this organisation.",
                                     "See 'kmsemu portal users ORG'."),
    "unknown_offer": ServiceErrorInfo(404, "No such offer.", "See 'kmsemu portal offers'."),
    "org_exists": ServiceErrorInfo(409, "An organisation with this name exists.",
                                   "Choose another name."),
    "user_exists": ServiceErrorInfo(409, "A user with this name exists in the organisation.",
                                    "Choose another name."),
    "no_free_licences": ServiceErrorInfo(
        409, "There are no free licences for this offer.",
        "Buy more licences ('kmsemu portal buy') or remove one from another user "
        "('kmsemu portal unassign').",
    ),
    "already_assigned": ServiceErrorInfo(409, "The user already has a licence of this offer.",
                                         "Nothing to do."),
    "not_assigned": ServiceErrorInfo(409, "The user has no licence of this offer.",
                                     "See 'kmsemu portal users ORG'."),
}

#: The redemption errors of behaviour.md's table, in its order: what a fault can force.
REDEMPTION_ERRORS: tuple[str, ...] = tuple(
    code for code, info in SERVICE_ERRORS.items() if info.redemption)


class ServiceError(KmsemuError):
    """An HTTP service refused a request; ``code`` is a key of ``SERVICE_ERRORS``."""

    def __init__(self, code: str, detail: str = "", *, message: str | None = None,
                 status: int | None = None, headers: dict[str, str] | None = None,
                 **extra: object) -> None:
        self.info = SERVICE_ERRORS[code]
        self._status = status
        #: HTTP headers the answer carries (``Retry-After``).
        self.headers = headers or {}
        message = message or self.info.message
        if self.info.redemption:
            if detail:
                extra = {"detail": detail, **extra}
        elif detail:
            message = f"{message} ({detail})"
        super().__init__(message, code=code)
        self.detail = detail
        self.extra = extra

    @property
    def status(self) -> int:
        return self._status or self.info.status

    @property
    def hresult(self) -> int | None:
        return self.info.hresult

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "message": self.message,
                                   "hint": self.info.hint}
        if self.info.hresult is not None:
            body["hresult"] = format_hresult(self.info.hresult)
        body.update(self.extra)
        return {"error": body}


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
        "Bodies are `{\"error\": {\"code\", \"message\", \"hint\", \"hresult\"?}}`;"
        " the CLI prints the same object with `--json` and exits 1.",
        "",
        "| code | HTTP | HRESULT | message | hint |",
        "|---|---|---|---|---|",
        *(
            f"| `{code}` | {info.status} | "
            f"{format_hresult(info.hresult) if info.hresult is not None else ''} | "
            f"{info.message} | {info.hint} |"
            for code, info in SERVICE_ERRORS.items()
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


if __name__ == "__main__":
    print(markdown_table(), end="")
