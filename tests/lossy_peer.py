"""The workload of the lossy-relay tests, importable and runnable as a program.

The grid in ``tests/service/test_lossy_grid.py`` imports these coroutines and runs
them in-process; the network-namespace variant runs this module as a
program inside a namespace (``ip netns exec NS python -m tests.lossy_peer
...``) and reads one JSON line from its stdout:

``server --host H --cert C --key K``
    serve the DTLS and TLS echo on ephemeral ports of *H*; print
    ``{"dtls": PORT, "tls": PORT}``; run until SIGTERM.
``dtls --target H:P --ca CA [--clients N --messages M ...]``
    run :func:`dtls_clients`, print its :class:`DTLSCellResult` as JSON.
``tls --target H:P --ca CA --size BYTES``
    run :func:`tls_roundtrip`, print :class:`TLSResult` as JSON.

Every DTLS message carries the client number, a sequence number and a
SHA-256 prefix over both and the payload, so a receiver can tell an intact
message from a damaged one, and a repeated one from a new one.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import signal
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import trio

from trio_tls_dtls import (
    CertificateSettings,
    ClientSettings,
    DTLSChannel,
    HandshakeError,
    PeerInfo,
    ServerSettings,
    echo_handler,
    open_dtls_channel,
    open_tls_stream,
    serve_dtls,
    serve_tls,
)

_HEADER = struct.Struct(">HI")
_DIGEST = 8


def make_message(client: int, seq: int, rng: random.Random) -> bytes:
    """Client number, sequence number, a patterned payload of random size, a digest."""
    size = rng.randrange(16, 400)
    start = rng.randrange(256)
    body = _HEADER.pack(client, seq) + bytes((start + i) % 256 for i in range(size))
    return body + hashlib.sha256(body).digest()[:_DIGEST]


def check_message(message: bytes) -> tuple[int, int] | None:
    """``(client, seq)`` of an intact message; None if it is damaged."""
    if len(message) < _HEADER.size + _DIGEST:
        return None
    body, digest = message[:-_DIGEST], message[-_DIGEST:]
    if hashlib.sha256(body).digest()[:_DIGEST] != digest:
        return None
    client, seq = _HEADER.unpack_from(body)
    return client, seq


@dataclass
class DTLSCellResult:
    """What N DTLS clients saw through the relay."""

    clients: int
    completed: int = 0
    failures: list[str] = field(default_factory=list)
    """The reason of each HandshakeError (``"timeout"`` when the deadline passed)."""
    unexpected: list[str] = field(default_factory=list)
    """Anything else raised, or a client that outlived its deadline: always a bug."""
    sent: int = 0
    echoed: int = 0
    duplicates: int = 0
    damaged: int = 0
    foreign: int = 0
    """Intact echoes that are not one of this client's own messages."""

    @property
    def fraction(self) -> float:
        return self.completed / self.clients


async def dtls_clients(
    host: str,
    port: int,
    settings: ClientSettings,
    *,
    clients: int = 4,
    messages: int = 10,
    echo_wait: float = 1.0,
    seed: int = 0,
    server_hostname: str | None = None,
) -> DTLSCellResult:
    """Run *clients* DTLS clients at once: handshake, send numbered messages, count echoes.

    Each handshake has ``settings.handshake_timeout``; a client still in
    ``open_dtls_channel`` 5 s after that is recorded as unexpected (a hang).
    Echoes are collected until all have come back or *echo_wait* seconds
    after the last send, whichever is first.
    """
    result = DTLSCellResult(clients)
    grace = settings.handshake_timeout + 5.0

    async def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        try:
            with trio.fail_after(grace):
                channel = await open_dtls_channel(
                    host, port, settings=settings, server_hostname=server_hostname
                )
        except HandshakeError as exc:
            result.failures.append(exc.reason)
            return
        except trio.TooSlowError:
            result.unexpected.append(f"client {number}: handshake still running after {grace}s")
            return
        except Exception as exc:
            result.unexpected.append(f"client {number}: handshake raised {exc!r}")
            return
        result.completed += 1
        seen: set[int] = set()
        all_echoed = trio.Event()
        try:
            async with channel, trio.open_nursery() as nursery:

                async def collect() -> None:
                    async for echo in channel:
                        checked = check_message(echo)
                        if checked is None:
                            result.damaged += 1
                        elif checked[0] != number or checked[1] >= messages:
                            result.foreign += 1
                        elif checked[1] in seen:
                            result.duplicates += 1
                        else:
                            seen.add(checked[1])
                            result.echoed += 1
                            if len(seen) == messages:
                                all_echoed.set()

                nursery.start_soon(collect)
                for seq in range(messages):
                    await channel.send(make_message(number, seq, rng))
                    result.sent += 1
                    await trio.sleep(0.01)
                with trio.move_on_after(echo_wait):
                    await all_echoed.wait()
                nursery.cancel_scope.cancel()
        except Exception as exc:
            result.unexpected.append(f"client {number}: echo raised {exc!r}")

    async with trio.open_nursery() as nursery:
        for number in range(clients):
            nursery.start_soon(client, number)
    return result


@dataclass
class RecordingHandler:
    """A DTLS echo handler that checks and remembers every message it gets."""

    received: list[tuple[int, int]] = field(default_factory=list)
    duplicates: int = 0
    damaged: int = 0

    async def __call__(self, channel: DTLSChannel, peer: PeerInfo) -> None:
        async for message in channel:
            checked = check_message(message)
            if checked is None:
                self.damaged += 1
                continue
            if checked in self.received:
                self.duplicates += 1
            self.received.append(checked)
            await channel.send(message)


@dataclass
class TLSResult:
    sent: int
    received: int
    identical: bool


def pattern(size: int) -> bytes:
    """*size* bytes no shorter period than 251 can hide: shifted or lost chunks show."""
    block = bytes(range(251))
    return (block * (size // len(block) + 1))[:size]


async def tls_roundtrip(
    host: str,
    port: int,
    settings: ClientSettings,
    *,
    size: int = 1 << 20,
    server_hostname: str | None = None,
) -> TLSResult:
    """Send *size* patterned bytes to a TLS echo server while reading the echo back."""
    data = pattern(size)
    echo = bytearray()
    stream = await open_tls_stream(host, port, settings=settings, server_hostname=server_hostname)
    async with stream, trio.open_nursery() as nursery:

        async def send() -> None:
            for start in range(0, size, 16384):
                await stream.send_all(data[start : start + 16384])

        nursery.start_soon(send)
        while len(echo) < size:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            echo += chunk
    return TLSResult(size, len(echo), bytes(echo) == data)


# -- the program -------------------------------------------------------------------


async def _serve(host: str, settings: ServerSettings) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            dtls = await nursery.start(
                lambda task_status: serve_dtls(
                    RecordingHandler(), 0, host=host, settings=settings, task_status=task_status
                )
            )
            tls = await nursery.start(
                lambda task_status: serve_tls(
                    echo_handler, 0, host=host, settings=settings, task_status=task_status
                )
            )
            ports = {"dtls": dtls.addresses[0][1], "tls": tls.addresses[0][1]}
            print(json.dumps(ports), flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="lossy-relay test peer")
    parser.add_argument("role", choices=["server", "dtls", "tls"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--target", help="HOST:PORT")
    parser.add_argument("--ca", type=Path)
    parser.add_argument("--server-hostname", default="localhost")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--handshake-timeout", type=float, default=6.0)
    parser.add_argument("--echo-wait", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=1 << 20)
    args = parser.parse_args(argv)
    if args.role == "server":
        if args.cert is None or args.key is None:
            parser.error("server needs --cert and --key")
        settings = ServerSettings(
            certificate=CertificateSettings(args.cert, args.key), handshake_timeout=30.0
        )
        trio.run(_serve, args.host, settings)
        return 0
    if args.target is None or args.ca is None:
        parser.error(f"{args.role} needs --target and --ca")
    host, _, port = args.target.rpartition(":")
    client_settings = ClientSettings(ca_file=args.ca, handshake_timeout=args.handshake_timeout)
    outcome: DTLSCellResult | TLSResult
    if args.role == "dtls":
        outcome = trio.run(
            lambda: dtls_clients(
                host,
                int(port),
                client_settings,
                clients=args.clients,
                messages=args.messages,
                echo_wait=args.echo_wait,
                seed=args.seed,
                server_hostname=args.server_hostname,
            )
        )
    else:
        outcome = trio.run(
            lambda: tls_roundtrip(
                host,
                int(port),
                client_settings,
                size=args.size,
                server_hostname=args.server_hostname,
            )
        )
    print(json.dumps(dataclasses.asdict(outcome)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
