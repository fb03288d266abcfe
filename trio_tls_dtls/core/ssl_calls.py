"""The engines' per-record OpenSSL calls, made without pyOpenSSL's per-call wrappers.

pyOpenSSL's ``Connection`` methods wrap each OpenSSL call in Python: they
check the arguments, allocate a buffer, convert the return code into an
exception (``WantReadError`` for "no input yet", on every empty read) and
copy the result. For a small record that wrapper costs several times what
OpenSSL itself does, and an echoed record makes four such calls. Here the
same calls go straight through the bindings pyOpenSSL is built on
(``OpenSSL._util.lib``, from ``cryptography``):

* :func:`feed` puts ciphertext into the connection's input memory BIO
  (``BIO_write``); :func:`take_output` takes all the ciphertext OpenSSL
  wrote (``BIO_get_mem_data`` says how much, one ``BIO_read`` takes it);
* :func:`handshake_step`, :func:`read` and :func:`write` are
  ``SSL_do_handshake``, ``SSL_read`` and ``SSL_write`` with
  ``SSL_get_error`` consulted only when the return code says something
  went wrong: "need more input" is a return value (False, None), not an
  exception;
* :func:`ciphertext_waiting`, :func:`ciphertext_buffered` and
  :func:`plaintext_buffered` ask the BIOs and OpenSSL how much they hold;
* :func:`renew_empty_bios` gives back the memory of the BIOs: a memory BIO
  keeps the largest buffer it ever needed (the ClientHello, the server's
  flight, a 64 KiB read) for the life of the connection, and the bindings
  cannot shrink one, so an empty one is replaced by a new, empty one.

Everything else, every failure and the peer's close_notify included, is
handed back to pyOpenSSL (``Connection._raise_ssl_error``), which raises
exactly the exception its own method would have (``ZeroReturnError``,
``SysCallError``, ``SSL.Error`` with OpenSSL's error queue, or an exception
a callback raised). So the engines' error handling and messages do not
change; only the common cases got cheaper. Before each result, as pyOpenSSL
does, an exception raised inside one of its callbacks (certificate
verification, ALPN selection, OCSP) is raised.

These functions use pyOpenSSL's private attributes (``_ssl``, ``_into_ssl``,
``_from_ssl``, ``_context``), as :mod:`._ossl` does. Every name used exists
from pyOpenSSL 25.0 / cryptography 44 (the oldest supported pair) on; the
test matrix runs the engines on the oldest and newest.

Thread safety: the functions keep no state between calls (buffers are made
per call), so two threads may use two connections at once. One connection
is used by one thread at a time (the drivers' EngineGuard).
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

__all__ = [
    "MAX_RECORD_PLAINTEXT",
    "ciphertext_buffered",
    "ciphertext_waiting",
    "feed",
    "handshake_step",
    "plaintext_buffered",
    "read",
    "renew_empty_bios",
    "take_output",
    "write",
]

_lib_any: Any = _lib
_ffi_any: Any = _ffi

# One SSL_read returns at most one record's plaintext (TLS and DTLS: 16 KiB),
# so no read needs a larger buffer than this, whatever the caller asked for.
MAX_RECORD_PLAINTEXT = 16384

_WANT_READ: int = _lib_any.SSL_ERROR_WANT_READ
_NULL = _ffi_any.NULL
# Buffers OpenSSL fills before we copy out what it wrote: zeroing them first
# (what ffi.new does) would only cost time. pyOpenSSL does the same.
_new_unzeroed = _ffi_any.new_allocator(should_clear_after_alloc=False)

_BIO_write = _lib_any.BIO_write
_BIO_read = _lib_any.BIO_read
_BIO_get_mem_data = _lib_any.BIO_get_mem_data
_SSL_read = _lib_any.SSL_read
_SSL_write = _lib_any.SSL_write
_SSL_do_handshake = _lib_any.SSL_do_handshake
_SSL_get_error = _lib_any.SSL_get_error
_SSL_pending = _lib_any.SSL_pending
_SSL_set_bio = _lib_any.SSL_set_bio
_BIO_new = _lib_any.BIO_new
_BIO_s_mem = _lib_any.BIO_s_mem
_BIO_set_mem_eof_return = _lib_any.BIO_set_mem_eof_return
_unpack = _ffi_any.unpack
_from_buffer = _ffi_any.from_buffer


def _raise_callback_problem(conn: SSL.Connection) -> None:
    """Raise what a pyOpenSSL callback raised during the last call, as its methods do."""
    context: Any = conn._context
    for helper in (context._verify_helper, context._alpn_select_helper, context._ocsp_helper):
        if helper is not None:
            helper.raise_if_problem()


def _raise_failure(conn: SSL.Connection, result: int) -> None:
    """Raise pyOpenSSL's exception for a failed call (it never returns)."""
    conn_any: Any = conn
    conn_any._raise_ssl_error(conn_any._ssl, result)
    # Only WANT_READ/WANT_WRITE-like codes could get here, and callers
    # handle WANT_READ themselves; a memory BIO never wants a write.
    raise SSL.Error(f"OpenSSL returned {result} and reported no error")


# -- the memory BIOs ---------------------------------------------------------------


def feed(conn: SSL.Connection, data: bytes | bytearray | memoryview) -> None:
    """Put *data* (ciphertext from the peer, not empty) into the input BIO."""
    conn_any: Any = conn
    if type(data) is bytes:
        result = _BIO_write(conn_any._into_ssl, data, len(data))
    else:
        with _from_buffer(data) as view:
            result = _BIO_write(conn_any._into_ssl, view, len(view))
    if result <= 0:  # a memory BIO grows; this is a zero-length write or no memory
        conn_any._handle_bio_errors(conn_any._into_ssl, result)


def take_output(conn: SSL.Connection) -> bytes:
    """All the ciphertext OpenSSL has written for the peer (b"" if none)."""
    bio = conn._from_ssl
    waiting = _BIO_get_mem_data(bio, _NULL)
    if not waiting:
        return b""
    buf = _new_unzeroed("char[]", waiting)
    got = _BIO_read(bio, buf, waiting)
    if got <= 0:  # pragma: no cover - it just said it holds that much
        conn._handle_bio_errors(bio, got)
    return bytes(_unpack(buf, got))


def ciphertext_waiting(conn: SSL.Connection) -> int:
    """Bytes OpenSSL has written for the peer and not yet been read out."""
    return int(_BIO_get_mem_data(conn._from_ssl, _NULL))


def ciphertext_buffered(conn: SSL.Connection) -> int:
    """Bytes from the peer fed in but not yet read by OpenSSL."""
    return int(_BIO_get_mem_data(conn._into_ssl, _NULL))


def renew_empty_bios(conn: SSL.Connection, *, eof: bool) -> None:
    """Replace each memory BIO that holds nothing with a new one (OpenSSL frees the old).

    *eof*: the peer's end of input was fed (the new input BIO says so too,
    as ``Connection.bio_shutdown`` made the old one say).
    """
    conn_any: Any = conn
    into, out = conn_any._into_ssl, conn_any._from_ssl
    new_into = new_out = _NULL
    if not _BIO_get_mem_data(into, _NULL):
        new_into = _BIO_new(_BIO_s_mem())
        if new_into != _NULL and eof:
            _BIO_set_mem_eof_return(new_into, 0)
    if not _BIO_get_mem_data(out, _NULL):
        new_out = _BIO_new(_BIO_s_mem())
    if new_into == _NULL and new_out == _NULL:
        return  # nothing empty (or no memory for a new one): keep what there is
    if new_into == _NULL:
        new_into = into
    if new_out == _NULL:
        new_out = out
    # Both changed or one changed: SSL_set_bio takes the new one(s) and
    # frees what it replaced; the record layer follows.
    _SSL_set_bio(conn_any._ssl, new_into, new_out)
    conn_any._into_ssl = new_into
    conn_any._from_ssl = new_out


def plaintext_buffered(conn: SSL.Connection) -> int:
    """Decrypted bytes OpenSSL holds from a record read earlier."""
    return int(_SSL_pending(conn._ssl))


# -- the SSL object ------------------------------------------------------------------


def handshake_step(conn: SSL.Connection) -> bool:
    """``SSL_do_handshake``: True once complete, False if it needs more input.

    Raises pyOpenSSL's exception for anything else.
    """
    ssl = conn._ssl
    result = _SSL_do_handshake(ssl)
    _raise_callback_problem(conn)
    if result == 1:
        return True
    if _SSL_get_error(ssl, result) == _WANT_READ:
        return False
    _raise_failure(conn, result)
    return False  # pragma: no cover - _raise_failure raises


def read(conn: SSL.Connection, max_bytes: int) -> bytes | None:
    """Up to *max_bytes* of plaintext (one record's at most); None if it needs more input.

    The peer's close_notify raises ``SSL.ZeroReturnError``, as pyOpenSSL's
    ``recv`` does; so does every failure raise its exception.
    """
    size = max_bytes if max_bytes < MAX_RECORD_PLAINTEXT else MAX_RECORD_PLAINTEXT
    ssl = conn._ssl
    buf = _new_unzeroed("char[]", size)
    result = _SSL_read(ssl, buf, size)
    _raise_callback_problem(conn)
    if result > 0:
        return bytes(_unpack(buf, result))
    if _SSL_get_error(ssl, result) == _WANT_READ:
        return None
    _raise_failure(conn, result)
    return None  # pragma: no cover - _raise_failure raises


def write(conn: SSL.Connection, data: bytes | bytearray | memoryview) -> None:
    """Encrypt all of *data* (not empty) into records in the output BIO."""
    ssl = conn._ssl
    if type(data) is bytes and len(data) < 2**31:
        # The common case: one call, the bytes passed as they are.
        result = _SSL_write(ssl, data, len(data))
        _raise_callback_problem(conn)
        if result == len(data):
            return
        if result <= 0:
            _raise_failure(conn, result)
        data = data[result:]  # a partial write (never with a memory BIO)
    with _from_buffer(data) as view:
        total, left = 0, len(view)
        while left:
            # SSL_write takes an int: at most 2**31 - 1 bytes a call.
            result = _SSL_write(ssl, view + total, min(left, 2**31 - 1))
            _raise_callback_problem(conn)
            if result <= 0:
                _raise_failure(conn, result)
            total += result
            left -= result
