"""One activation on the host, from REQUEST stub to RESPONSE stub (pure).

``KmsHost.handle`` opens the envelope with the host's keyring, lets
``HostRules`` decide, and seals the answer with a fresh nonce from the
``nonce`` source it was given. Stub data that does not parse raises
``NdrError`` (the connection answers FAULT ``nca_s_fault_ndr``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

from kmsemu.host.rules import Answer, HostRules, LogRecord
from kmsemu.klp.envelope import EnvelopeError, Keyring, seal_response
from kmsemu.rpc.ndr import decode_request_stub, encode_response_stub


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
    ) -> None:
        self.rules = rules
        self.keyring = keyring
        self._now = now
        self._nonce = nonce

    def handle(self, stub: bytes) -> Outcome:
        """Answer a REQUEST stub; an envelope that does not open gets a bare error stub."""
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
