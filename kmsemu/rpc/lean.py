"""The common exchange in a handful of calls: a ``ServerConnection`` with a fast path.

Nearly every chunk a KMS host receives is one whole PDU: the BIND a client
opens with, then single-fragment REQUESTs. ``LeanConnection.take`` answers
such a chunk without the general machine's buffering, dispatch table and
slicing: one ``struct`` unpack of the header, the checks ``next_event``
would make, and either a ``Call`` or a BIND_ACK cut from a cached template.
Anything else (a chunk with half a PDU or two, a fragment, an
ALTER_CONTEXT, an error, the end of stream) is left to the general path
(``take`` returns None; feed the chunk to ``receive_data`` as usual).

The general ``ServerConnection`` stays the reference: for any byte stream,
split anywhere, ``take`` followed by the general path where it declines
gives the same events, the same bytes and the same state
(``tests/test_lean.py`` checks it with Hypothesis).
"""

from __future__ import annotations

import struct
from typing import Final

from kmsemu.rpc.connection import Call, Event, Send, ServerConnection, State
from kmsemu.rpc.pdu import HEADER, HEADER_SIZE, PFC, PType

_BIND: Final = int(PType.BIND)
_REQUEST: Final = int(PType.REQUEST)
#: The flags ``_on_request`` looks at, and their value for a whole, UUID-less call.
_CALL_FLAGS: Final = int(PFC.FIRST_FRAG | PFC.LAST_FRAG | PFC.OBJECT_UUID)
_WHOLE_CALL: Final = int(PFC.FIRST_FRAG | PFC.LAST_FRAG)
_REQUEST_FIXED = struct.Struct("<IHH")
_BIND_SIZE: Final = 28
_REQUEST_SIZE: Final = 24
#: The states, looked up once (``State.BOUND`` goes through the enum's metaclass each time).
_AWAIT_BIND: Final = State.AWAIT_BIND
_BOUND: Final = State.BOUND
_tuple_new: Final = tuple.__new__

#: BIND_ACK templates by what decides them: (the interface's ``id``, address block, frame
#: limit, BIND lengths, BIND fragment sizes, BIND contexts) -> (the BIND_ACK around its
#: call id, its fragment sizes, the BIND_ACK past its association group, xmit limit, recv
#: limit, accepted contexts, the interface). By ``id``: hashing a ``SyntaxId`` runs Python
#: code on every BIND; the entry holds its interface, so no other object can take that
#: ``id`` while the entry lasts. Bounded: a hostile peer only misses.
_ACKS: dict[tuple[object, ...], tuple[bytes, bytes, bytes, int, int, frozenset[int], object]] = {}
#: A BIND's lengths, fragment sizes and association group (the call id between is skipped).
_BIND_FIELDS = struct.Struct("<8xI4xII")
#: A BIND_ACK's call id, fragment sizes and association group.
_ACK_IDS = struct.Struct("<I4sI")
_ACKS_MAX: Final = 256


class LeanConnection(ServerConnection):
    """A ``ServerConnection`` that takes whole BINDs and whole REQUESTs in a few calls."""

    __slots__ = ()

    def take(self, data: bytes) -> Event | None:
        """The one event ``data`` (one whole PDU) amounts to, with the state changed as the
        general path would change it; None when the general path has to judge it (then
        ``receive_data(data)`` and ``next_event`` as usual; nothing has changed)."""
        if self._buffer or self._eof or self._closed is not None or len(data) < HEADER_SIZE:
            return None
        vers, minor, ptype, flags, drep, frag_length, auth_length, call_id = HEADER.unpack_from(
            data
        )
        if (
            frag_length != len(data)
            or vers != 5
            or minor > 1
            or drep[0] & 0xF0 != 0x10
            or frag_length > self.recv_limit
        ):
            return None
        if ptype == _REQUEST:
            if (
                self.state is not _BOUND
                or auth_length
                or flags & _CALL_FLAGS != _WHOLE_CALL
                or frag_length < _REQUEST_SIZE
                or self._partial
            ):
                return None
            _hint, context_id, opnum = _REQUEST_FIXED.unpack_from(data, HEADER_SIZE)
            if (
                context_id not in self.contexts
                or opnum >= self._opnums
                or frag_length - _REQUEST_SIZE > self._max_stub
            ):
                return None
            # tuple.__new__: Call(...) would run the NamedTuple's generated Python __new__
            return _tuple_new(Call, (call_id, context_id, opnum, data[_REQUEST_SIZE:]))
        if ptype == _BIND and self.state is _AWAIT_BIND and frag_length >= _BIND_SIZE:
            if auth_length > frag_length - HEADER_SIZE:
                return None
            return self._take_bind(data, call_id)
        return None

    def _take_bind(self, data: bytes, call_id: int) -> Event | None:
        lengths, sizes, assoc = _BIND_FIELDS.unpack_from(data)
        key = (id(self._interface), self._secondary, self._max_frag, lengths, sizes, data[24:])
        known = _ACKS.get(key)
        if known is None:
            return self._learn_bind(key, data)
        head, sizes_out, tail, self.xmit_limit, self.recv_limit, accepted, _ = known
        self.state = _BOUND
        self.contexts.update(accepted)
        if assoc:
            self._assoc_group_id = assoc
        ids = _ACK_IDS.pack(call_id, sizes_out, self._assoc_group_id)  # this BIND's, in place
        return _tuple_new(Send, (head + ids + tail, ""))

    def _learn_bind(self, key: tuple[object, ...], data: bytes) -> Event:
        """The general path's answer to a BIND not seen before, remembered as a template
        (a connection awaiting its BIND has accepted no context yet: the template's
        contexts are exactly what the BIND accepts)."""
        self.receive_data(data)
        event = self.next_event()
        if isinstance(event, Send) and self.state is _BOUND:
            if len(_ACKS) >= _ACKS_MAX:
                _ACKS.clear()
            ack = event.data
            _ACKS[key] = (ack[:12], ack[16:20], ack[24:], self.xmit_limit, self.recv_limit,
                          frozenset(self.contexts), self._interface)  # fmt: skip
        return event
