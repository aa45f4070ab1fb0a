"""UDP in batches: receive the datagrams waiting on a socket, answer each, send the replies.

A cached DNS answer costs about a microsecond of Python; what is left of a query's cost is
system calls and the event loop's per-datagram machinery (a callback, an address tuple,
a ``sendto`` each). So the server does not use asyncio's datagram transport: when its
non-blocking socket is readable, a pump drains it.

- ``MmsgPump`` (Linux) moves up to ``BATCH`` datagrams per system call with recvmmsg(2)
  and sendmmsg(2), as BIND's named does. Python's ``socket`` has neither, so it calls
  libc through ctypes, on structures laid out once in one anonymous mmap: per slot a
  ``struct mmsghdr`` to receive and one to send, their iovecs, the peer's address and
  64 KiB for the datagram (room for any UDP payload, so none is ever cut). Pages the
  kernel never writes are never allocated. A reply goes out from its query's slot (or
  an earlier one, when queries before it got none), to the address it came from, which
  is never turned into a Python tuple unless an UPDATE needs the peer's address.
- ``PlainPump`` (elsewhere, or where libc lacks them) does the same with ``recvfrom`` and
  ``sendto``: a call per datagram, still one event-loop wake-up per batch.

``respond(data, peer)`` gives a datagram's reply or None (no reply); ``peer()`` (the
pump's ``peer_host``) names the sender, at a small cost: an UPDATE needs it, a query
does not. ``tally(answered, dropped)`` counts replies before they leave, so that
whoever holds a reply sees it counted. ``run(limit)`` handles at most ``limit``
datagrams, so that the loop's other callbacks (TCP clients) get their turn.

A reply the socket will not take now (EAGAIN) waits in ``backlog`` (bounded, as a socket
buffer is), sent in order by ``flush_backlog()`` once the socket is writable; one the
kernel refuses for good (EMSGSIZE, EPERM, ENOBUFS, ...) is dropped: what asyncio's
datagram transport does with both.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import socket
import sys
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

#: Datagrams per recvmmsg/sendmmsg call.
BATCH: Final = 64
#: Replies per sendmmsg call at most: the client gets them while the rest are answered
#: (a whole batch at once would leave it idle meanwhile, and throughput with it).
FLUSH: Final = 16
#: Replies kept while the socket refuses more (EAGAIN); beyond that they are dropped.
BACKLOG: Final = 1024
#: Bytes for one datagram: IPv6's largest UDP payload is 65,527.
SLOT: Final = 65536
_NAME: Final = 128  # sizeof(struct sockaddr_storage)
_AGAIN: Final = (errno.EAGAIN, errno.EWOULDBLOCK)
_SOCKADDR_SIZE: Final = {socket.AF_INET: 16, socket.AF_INET6: 28}

Respond = Callable[[bytes, Callable[[], str]], "bytes | None"]
Tally = Callable[[int, int], None]
Address = tuple[Any, ...]


class Pump(Protocol):
    """What the server drives: see the module docstring."""

    backlog: deque[tuple[bytes, Address]]

    def run(self, limit: int) -> int:
        """Handle the datagrams waiting (at most ``limit``); how many there were."""
        ...

    def peer_host(self) -> str:
        """The sender of the datagram being answered (only while ``respond`` runs)."""
        ...

    def flush_backlog(self) -> bool:
        """Send what ``backlog`` holds, as far as the socket takes it; True when empty."""
        ...

    def close(self) -> None:
        """Release the buffers (the socket is the caller's)."""
        ...


class _Backlog:
    backlog: deque[tuple[bytes, Address]]
    _sock: socket.socket

    def _later(self, reply: bytes, address: Address) -> None:
        if len(self.backlog) < BACKLOG:
            self.backlog.append((reply, address))

    def flush_backlog(self) -> bool:
        backlog = self.backlog
        while backlog:
            reply, address = backlog[0]
            try:
                self._sock.sendto(reply, address)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                pass  # refused for good: dropped, as asyncio's transport drops it
            backlog.popleft()
        return True


class PlainPump(_Backlog):
    """``recvfrom`` and ``sendto``, one datagram at a time (any platform)."""

    def __init__(self, sock: socket.socket, respond: Respond, tally: Tally) -> None:
        self._sock = sock
        self._respond = respond
        self._tally = tally
        self._peer: Address = ("", 0)
        self.backlog = deque()

    def run(self, limit: int) -> int:
        """Handle the datagrams waiting (at most ``limit``); how many there were."""
        sock, respond, tally, peer_host = self._sock, self._respond, self._tally, self.peer_host
        handled = 0
        while handled < limit:
            try:
                data, peer = sock.recvfrom(SLOT)
            except InterruptedError:
                continue
            except OSError:  # BlockingIOError: none left; others: as asyncio, ignored
                break
            handled += 1
            self._peer = peer
            reply = respond(data, peer_host)
            if reply is None:
                tally(0, 1)
                continue
            tally(1, 0)
            if self.backlog:
                self._later(reply, peer)
                continue
            try:
                sock.sendto(reply, peer)
            except (BlockingIOError, InterruptedError):
                self._later(reply, peer)
            except OSError:
                pass
        return handled

    def peer_host(self) -> str:
        """The sender of the datagram being answered (only while ``respond`` runs)."""
        return str(self._peer[0])

    def close(self) -> None:
        """Release the buffers (the socket is the caller's)."""
        self.backlog.clear()


# -- recvmmsg/sendmmsg ---------------------------------------------------------------------


class _Iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),  # socklen_t
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint))


_HDR: Final = ctypes.sizeof(_Mmsghdr)
_IOV: Final = ctypes.sizeof(_Iovec)
_LEN_AT: Final = _Mmsghdr.msg_len.offset
_IOV_LEN_AT: Final = _Iovec.iov_len.offset
_SIZE_T: Final = ctypes.sizeof(ctypes.c_size_t)
_MSG_DONTWAIT: Final = 0x40  # Linux


def _libc_mmsg() -> tuple[Any, Any] | None:
    """libc's recvmmsg and sendmmsg with their signatures, or None where there are none."""
    if not sys.platform.startswith("linux"):
        return None  # the struct layouts and MSG_DONTWAIT above are Linux's
    if ctypes.sizeof(ctypes.c_ulong) != _SIZE_T:
        return None  # iov_len is read and written as an unsigned long
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.argtypes = (
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_void_p,
    )
    sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    recvmmsg.restype = sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


_MMSG = _libc_mmsg()


class MmsgPump(_Backlog):
    """recvmmsg(2) and sendmmsg(2) through ctypes (Linux; see the module docstring)."""

    def __init__(self, sock: socket.socket, respond: Respond, tally: Tally) -> None:
        if _MMSG is None:
            raise OSError("recvmmsg/sendmmsg are not available")
        if sock.family not in _SOCKADDR_SIZE:
            raise OSError(f"no sockaddr layout for family {sock.family}")
        self._recvmmsg, self._sendmmsg = _MMSG
        self._sock = sock
        self._fd = sock.fileno()
        self._family = sock.family
        self._respond = respond
        self._tally = tally
        self._slot = 0
        self.backlog = deque()
        # the layout: receive headers, send headers, their iovecs, addresses, datagrams
        rx, tx = 0, BATCH * _HDR
        rx_iov, tx_iov = 2 * BATCH * _HDR, 2 * BATCH * _HDR + BATCH * _IOV
        names = 2 * BATCH * (_HDR + _IOV)
        self._names = names
        self._bufs = bufs = -(-(names + BATCH * _NAME) // mmap.PAGESIZE) * mmap.PAGESIZE
        self._mm = mm = mmap.mmap(-1, bufs + BATCH * SLOT)
        self._pin: ctypes.c_char | None = ctypes.c_char.from_buffer(mm)  # holds the mapping
        base = ctypes.addressof(self._pin)
        self._rx, self._tx = base + rx, base + tx
        rx_headers = (_Mmsghdr * BATCH).from_buffer(mm, rx)
        tx_headers = (_Mmsghdr * BATCH).from_buffer(mm, tx)
        rx_iovecs = (_Iovec * BATCH).from_buffer(mm, rx_iov)
        tx_iovecs = (_Iovec * BATCH).from_buffer(mm, tx_iov)
        for i in range(BATCH):
            buf, name = base + bufs + i * SLOT, base + names + i * _NAME
            rx_iovecs[i].iov_base = tx_iovecs[i].iov_base = buf
            rx_iovecs[i].iov_len = SLOT
            for headers, iovecs, namelen in (
                (rx_headers, rx_iov, _NAME),
                (tx_headers, tx_iov, _SOCKADDR_SIZE[sock.family]),
            ):
                hdr = headers[i].msg_hdr
                hdr.msg_name, hdr.msg_namelen = name, namelen
                hdr.msg_iov, hdr.msg_iovlen = base + iovecs + i * _IOV, 1
        del rx_headers, tx_headers, rx_iovecs, tx_iovecs  # their exports of ``mm`` end here
        self._view = memoryview(mm)
        self._u32 = self._view.cast("I")
        self._size = self._view.cast("L")  # size_t: unsigned long on Linux
        # indexes into those views: slot i's msg_len, and send slot j's iov_len
        self._len_index = (rx + _LEN_AT) // 4
        self._iov_len_index = (tx_iov + _IOV_LEN_AT) // _SIZE_T

    def run(self, limit: int) -> int:
        """Handle the datagrams waiting (at most ``limit``); how many there were."""
        handled = 0
        mm, u32, size_view = self._mm, self._u32, self._size
        respond, fd, rx, peer_host = self._respond, self._fd, self._rx, self.peer_host
        bufs, names, len_index, iov_len_index = (
            self._bufs,
            self._names,
            self._len_index,
            self._iov_len_index,
        )
        len_step, iov_step = _HDR // 4, _IOV // _SIZE_T
        flush = FLUSH
        while limit > 0:
            wanted = min(BATCH, limit)
            n = self._recvmmsg(fd, rx, wanted, _MSG_DONTWAIT, None)
            if n < 0:
                if ctypes.get_errno() == errno.EINTR:
                    continue
                break  # EAGAIN: none left; others: as asyncio, ignored
            handled += n
            limit -= n
            answered = dropped = out = sent = 0
            for i in range(n):
                at = bufs + i * SLOT
                self._slot = i
                reply = respond(mm[at : at + u32[len_index + i * len_step]], peer_host)
                if reply is None:
                    dropped += 1
                    continue
                answered += 1
                length = len(reply)
                if length > SLOT:
                    continue  # no UDP datagram is that long: the kernel would refuse it
                if out != i:  # an earlier query got no reply: move into its slot
                    name = names + i * _NAME
                    mm[names + out * _NAME : names + (out + 1) * _NAME] = mm[name : name + _NAME]
                    at = bufs + out * SLOT
                mm[at : at + length] = reply
                size_view[iov_len_index + out * iov_step] = length
                out += 1
                if out - sent == flush:  # the client gets these while the rest are answered
                    self._tally(answered, dropped)
                    answered = dropped = 0
                    self._send(sent, out)
                    sent = out
            self._tally(answered, dropped)
            if out > sent:
                self._send(sent, out)
            if n < wanted:
                break
        return handled

    def _send(self, start: int, count: int) -> None:
        """Send slots ``start`` to ``count`` (excluded)."""
        while start < count:
            if self.backlog:
                for slot in range(start, count):
                    self._later(self._reply(slot), self._address(slot))
                return
            sent = self._sendmmsg(self._fd, self._tx + start * _HDR, count - start, 0)
            if sent >= 0:
                start += sent
                continue
            code = ctypes.get_errno()
            if code == errno.EINTR:
                continue
            if code in _AGAIN:
                for slot in range(start, count):
                    self._later(self._reply(slot), self._address(slot))
                return
            start += 1  # this one is refused for good: dropped, the others still go

    def _reply(self, slot: int) -> bytes:
        at = self._bufs + slot * SLOT
        return self._mm[at : at + self._size[self._iov_len_index + slot * (_IOV // _SIZE_T)]]

    def _address(self, slot: int) -> Address:
        """Slot ``slot``'s peer as asyncio gives it: (host, port) or (host, port, flow, scope)."""
        at = self._names + slot * _NAME
        raw = self._mm[at : at + _NAME]
        port = int.from_bytes(raw[2:4], "big")
        if self._family == socket.AF_INET:
            return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
        flow = int.from_bytes(raw[4:8], "big")
        scope = int.from_bytes(raw[24:28], sys.byteorder)
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, flow, scope

    def peer_host(self) -> str:
        """The sender of the datagram being answered (only while ``respond`` runs)."""
        return str(self._address(self._slot)[0])

    def close(self) -> None:
        """Release the buffers (the socket is the caller's)."""
        self.backlog.clear()
        if self._pin is None:
            return
        self._u32.release()
        self._size.release()
        self._view.release()
        self._pin = None  # the last export of the mapping
        self._mm.close()


def new_pump(sock: socket.socket, respond: Respond, tally: Tally) -> Pump:
    """An ``MmsgPump`` where recvmmsg/sendmmsg work, else a ``PlainPump``."""
    if _MMSG is not None and sock.family in _SOCKADDR_SIZE:
        return MmsgPump(sock, respond, tally)
    return PlainPump(sock, respond, tally)
