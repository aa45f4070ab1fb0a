"""One activation on the host, from REQUEST stub to RESPONSE stub (pure).

``KmsHost.handle`` opens the envelope with the host's keyring, lets
``HostRules`` decide, and seals the answer with a fresh nonce from the
``nonce`` source it was given. Stub data that does not parse raises
``NdrError`` (the connection answers FAULT ``nca_s_fault_ndr``).

With the optional compiled core in use (``kmsemu.klp._fastcore``), the common
request takes two calls into it around the rules: ``HostCore.open`` (stub, envelope,
AES-GCM, plaintext checks, ``RequestFields``) and ``HostCore.seal`` (response
plaintext, AES-GCM, stub). Anything it does not take (a stub, envelope or plaintext
that does not check) goes the pure way, which stays the reference and words every
refusal; ``tests/test_core.py`` holds the two to the same bytes, records and state.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from kmsemu.host.rules import Answer, HostRules, LogRecord
from kmsemu.klp._fastcore import CORE
from kmsemu.klp.envelope import EnvelopeError, Keyring, seal_response
from kmsemu.klp.messages import NAME_FIELD_SIZE, RequestFields
from kmsemu.rpc.ndr import decode_request_stub, encode_response_stub
from kmsemu.wire import encode_utf16_field

if TYPE_CHECKING:
    from kmsemu._core import HostCore

_tuple_new = tuple.__new__


class Outcome(NamedTuple):
    """One request handled: the RESPONSE stub, its log record, why it failed if it did."""

    stub: bytes
    log: LogRecord
    reason: str


class KmsHost:
    """The host's activation handler: keyring, rules and clock, no I/O."""

    def __init__(
        self,
        rules: HostRules,
        keyring: Keyring,
        now: Callable[[], int],
        nonce: Callable[[int], bytes] = os.urandom,
        *,
        core: Any = CORE,
    ) -> None:
        self.rules = rules
        self.keyring = keyring
        self._now = now
        self._nonce = nonce
        #: The compiled core's view of the keyring and identity (None: the pure path only).
        self.core: HostCore | None = None if core is None else _host_core(core, rules, keyring)

    def handle(self, stub: bytes) -> Outcome:
        """Answer a REQUEST stub; an envelope that does not open gets a bare error stub."""
        core = self.core
        if core is not None:
            opened = core.open(stub)
            if opened is not None:
                return self._decided(core, *opened)
        return self.handle_pure(stub)

    def handle_pure(self, stub: bytes) -> Outcome:
        """``handle`` without the compiled core: the reference, and every refusal's words."""
        envelope = decode_request_stub(stub)
        now = self._now()
        try:
            opened = self.keyring.open_request(envelope)
        except EnvelopeError as exc:
            return Outcome(
                encode_response_stub(None, exc.status), LogRecord.bare(now, exc.status), exc.reason
            )
        answer: Answer = self.rules.answer(opened.plaintext, opened.nonce, now)
        sealed = seal_response(opened.key, answer.plaintext, self._nonce(12))
        return Outcome(encode_response_stub(sealed, 0), answer.log, answer.reason)

    def _decided(
        self, core: HostCore, request: Any, request_nonce: bytes, key_index: int
    ) -> Outcome:
        """The rules' answer to a request the core opened, sealed by the core (the same
        steps as ``rules.answer`` and ``seal_response`` on a plaintext that parses)."""
        rules = self.rules
        log, reason = rules.decide(request, self._now())
        time, status, count, _, cmid, request_time = log  # (fields by name: a lookup each)
        settings = rules.settings
        stub = core.seal(
            key_index,
            status,
            request_nonce,
            cmid,
            request_time,
            time,
            count,
            settings.activation_interval,
            settings.renewal_interval,
            self._nonce(12),
        )
        return _tuple_new(Outcome, (stub, log, reason))


def _host_core(core: Any, rules: HostRules, keyring: Keyring) -> HostCore:
    """The core's copy of what a request needs that does not change while a host runs:
    the keyring's keys (in the order secrets sharing a key id are tried) and the identity."""
    keys = [(k.key_id, k.request_key, k.response_key) for k in keyring.keys]
    epid = encode_utf16_field(rules.identity.epid, NAME_FIELD_SIZE)
    host_core: HostCore = core.HostCore(keys, rules.identity.host_id, epid, RequestFields)
    return host_core
