"""``trio-tlsd client``: connect, show what was negotiated, echo stdin lines.

What the handshake negotiated (protocol, cipher, the server's chain) and
every warning go to stderr; stdout carries only what the server sends back.
So ``printf 'a\\nb\\n' | trio-tlsd client tls host:4433 > out`` leaves exactly
the echoes in ``out``, and interactively both appear on the terminal.

Lines are sent as they are read. One task sends, another prints whatever
arrives, so a server that does not echo (or answers late) never blocks the
input. At the end of input we wait until as much has come back as was sent
(one datagram per line for DTLS), or until nothing has arrived for
``--linger`` seconds, then close.

``--reconnect N`` then connects N more times with the same settings object,
so through its session cache (see ``open_tls_stream``), and reports for each
whether the session resumed: a quick check that a server resumes sessions.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

import trio

from ..core.errors import TLSDError
from ..core.peer_info import PeerInfo
from ..drivers.dtls.channel import DTLSChannel
from ..drivers.dtls.client import open_dtls_channel
from ..drivers.tls.client import open_tls_stream
from ..drivers.tls.stream import TLSStream
from .targets import (
    Target,
    TargetError,
    add_client_tls_flags,
    client_settings,
    connect_failure,
    parse_target,
)

__all__ = ["add_parser", "describe_peer", "run"]

INSECURE_WARNING = (
    "trio-tlsd client: WARNING: --insecure: the server's certificate and name are NOT verified"
)


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    p = commands.add_parser(
        "client",
        help="connect over TLS or DTLS and echo stdin lines",
        description="Connect to HOST:PORT, print the negotiated protocol, cipher and the "
        "server's certificate chain (on stderr), then send each line of stdin and print "
        "what comes back (on stdout).",
    )
    p.add_argument("proto", choices=["tls", "dtls"], help="TLS over TCP or DTLS 1.2 over UDP")
    p.add_argument("target", type=parse_target, metavar="HOST:PORT", help="e.g. [::1]:4433")
    add_client_tls_flags(p)
    p.add_argument(
        "--ocsp",
        action="store_true",
        help="ask for the server's stapled OCSP response and fail unless it is valid and good",
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="handshake deadline (default: 10)"
    )
    p.add_argument(
        "--reconnect",
        type=int,
        default=0,
        metavar="N",
        help="after the session, connect N more times resuming its session, and report "
        "whether each resumed (default: 0)",
    )
    p.add_argument(
        "--linger",
        type=float,
        default=2.0,
        metavar="S",
        help="at end of input, wait this long for missing echoes (default: 2)",
    )
    p.set_defaults(run=run)


def describe_peer(info: PeerInfo, out: TextIO) -> None:
    """The negotiated parameters and the server's chain, one fact per line."""
    print(f"connected to {info.address and Target(*info.address)}", file=out)
    print(f"protocol: {info.protocol}", file=out)
    print(f"cipher:   {info.cipher}", file=out)
    if info.alpn:
        print(f"alpn:     {info.alpn}", file=out)
    print(f"resumed:  {'yes' if info.resumed else 'no'}", file=out)
    if info.ocsp is not None:
        print(f"ocsp:     {info.ocsp.describe()}", file=out)
    if info.psk_identity is not None:
        print(f"psk identity: {info.psk_identity}", file=out)
    chain = info.chain or ((info.certificate,) if info.certificate is not None else ())
    if not chain:
        print("server certificate: none", file=out)
    for depth, cert in enumerate(chain):
        print(f"chain[{depth}]: subject={cert.subject.rfc4514_string()}", file=out)
        print(f"          issuer={cert.issuer.rfc4514_string()}", file=out)
    out.flush()


def run(args: argparse.Namespace) -> int:
    if args.timeout <= 0 or args.linger < 0:
        raise TargetError("--timeout must be positive and --linger not negative")
    if args.reconnect < 0:
        raise TargetError(f"--reconnect must be 0 or more, not {args.reconnect}")
    settings = client_settings(args, handshake_timeout=args.timeout, require_ocsp=args.ocsp)
    if args.insecure:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
    return trio.run(_session, args, settings)


async def _connect(args: argparse.Namespace, settings: object) -> TLSStream | DTLSChannel:
    target: Target = args.target
    opener = open_tls_stream if args.proto == "tls" else open_dtls_channel
    try:
        return await opener(
            target.host,
            target.port,
            settings=settings,  # type: ignore[arg-type]
            server_hostname=args.servername,
        )
    except (OSError, TLSDError) as exc:
        raise connect_failure(exc, args.proto, target) from None


class _Tally:
    """Bytes (TLS) or datagrams (DTLS) sent and received, and when data last came."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.sent = 0
        self.received = 0
        self.changed = trio.Event()

    def got(self, amount: int) -> None:
        self.received += amount
        self.changed.set()
        self.changed = trio.Event()


async def _session(args: argparse.Namespace, settings: object) -> int:
    conn = await _connect(args, settings)
    describe_peer(conn.info, sys.stderr)
    tally = _Tally("bytes" if isinstance(conn, TLSStream) else "datagrams")
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_print_incoming, conn, tally, nursery.cancel_scope)
            await _send_lines(conn, tally)
            await _wait_for_echoes(tally, args.linger)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _one_failure(group, args) from None
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise _one_failure(exc, args) from None
    finally:
        with trio.move_on_after(1.0):
            await conn.aclose()
    for attempt in range(1, args.reconnect + 1):
        again = await _connect(args, settings)
        info = again.info
        resumed = "yes" if info.resumed else "no"
        print(
            f"reconnect {attempt}: resumed: {resumed} ({info.protocol}, {info.cipher})",
            file=sys.stderr,
            flush=True,
        )
        with trio.move_on_after(1.0):
            await again.aclose()
    return 0


def _one_failure(caught: BaseException, args: argparse.Namespace) -> TLSDError:
    """The first failure in *caught* (a nursery's group) as one TLSDError line."""
    exc = caught
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    if isinstance(exc, TLSDError):
        return exc
    if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError):
        return TargetError(f"{args.proto} {args.target}: connection lost: {exc}")
    raise caught


async def _read_line() -> bytes:
    # A thread that may be abandoned: if the server hangs up while the user
    # is not typing, we must not wait for their next Enter to exit.
    return await trio.to_thread.run_sync(sys.stdin.buffer.readline, abandon_on_cancel=True)


async def _send_lines(conn: TLSStream | DTLSChannel, tally: _Tally) -> None:
    while line := await _read_line():
        if isinstance(conn, TLSStream):
            await conn.send_all(line)
            tally.sent += len(line)
        else:
            if len(line) > conn.max_message_size:
                raise TargetError(
                    f"a line of {len(line)} bytes does not fit in one DTLS datagram "
                    f"(at most {conn.max_message_size} at this MTU)"
                )
            await conn.send(line)
            tally.sent += 1


async def _print_incoming(
    conn: TLSStream | DTLSChannel, tally: _Tally, scope: trio.CancelScope
) -> None:
    out = sys.stdout.buffer
    while True:
        if isinstance(conn, TLSStream):
            data = await conn.receive_some()
            if not data:
                print("trio-tlsd client: the server closed the connection", file=sys.stderr)
                scope.cancel()
                return
            tally.got(len(data))
        else:
            try:
                data = await conn.receive()
            except trio.EndOfChannel:
                print("trio-tlsd client: the server closed the association", file=sys.stderr)
                scope.cancel()
                return
            tally.got(1)
        out.write(data)
        out.flush()


async def _wait_for_echoes(tally: _Tally, linger: float) -> None:
    while tally.received < tally.sent:
        with trio.move_on_after(linger) as waited:
            await tally.changed.wait()
        if waited.cancelled_caught:
            missing = tally.sent - tally.received
            print(
                f"trio-tlsd client: {missing} {tally.unit} not echoed after {linger:g}s; closing",
                file=sys.stderr,
            )
            return
