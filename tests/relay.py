"""A lossy relay for tests: drops, duplicates, delays and reorders datagrams; splits TCP writes.

Run it between clients and a server::

    python tests/relay.py --listen 127.0.0.1:0 --target 127.0.0.1:4433 --udp \\
        --loss 0.2 --dup 0.05 --reorder 0.1 --delay-ms 0,5 --seed 7

It prints the address it is bound to (``HOST:PORT``, IPv6 in brackets) on
stdout once it is ready, runs until SIGTERM or SIGINT, then prints one line
``counters {...}`` (JSON: forwarded, dropped, duplicated, reordered, split)
and exits with status 0.

UDP: each client address gets its own upstream socket, so the server sees
as many peers as there are clients. Every datagram, in both directions,
is independently dropped (``--loss``), duplicated (``--dup``), delayed by a
uniform time in ``--delay-ms`` and, with probability ``--reorder``, held
back a little longer so that later datagrams overtake it. Without that,
each direction of each flow keeps its order.

TCP: bytes are forwarded both ways, nothing is lost (TCP is reliable); with
``--split`` every read is written out in random small chunks (1 to
``--max-chunk`` bytes) with a random delay from ``--delay-ms`` before each.

All random choices come from one ``random.Random(--seed)``. Task scheduling
is not deterministic, so the same seed gives the same kind of network, not
the very same trace. Needs only trio and the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import signal
import socket
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import trio

MAX_DATAGRAM = 65536
#: Extra hold for a datagram picked for reordering, in seconds (on top of its delay).
REORDER_HOLD = (0.005, 0.040)

Address = tuple[str, int]
Send = Callable[[bytes], Awaitable[object]]


@dataclass(frozen=True)
class Options:
    listen: Address
    target: Address
    udp: bool
    loss: float
    dup: float
    reorder: float
    delay: tuple[float, float]  # seconds
    split: bool
    max_chunk: int
    seed: int


def parse_address(text: str) -> Address:
    """``HOST:PORT`` or ``[V6]:PORT`` to a tuple; raises ValueError naming the text."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"not HOST:PORT: {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def format_address(address: tuple[object, ...]) -> str:
    host, port = str(address[0]), int(address[1])  # type: ignore[call-overload]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a probability is between 0 and 1, not {text}")
    return value


def _delay(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--delay-ms wants LO,HI in ms, not {text!r}") from None
    if not 0 <= low <= high:
        raise argparse.ArgumentTypeError(f"--delay-ms wants 0 <= LO <= HI, not {text!r}")
    return low / 1000, high / 1000


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to listen on (port 0: any)")
    parser.add_argument("--target", required=True, help="HOST:PORT of the server")
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--udp", action="store_true", help="relay datagrams")
    kind.add_argument("--tcp", action="store_true", help="relay a byte stream")
    parser.add_argument("--loss", type=_probability, default=0.0, help="UDP: drop probability")
    parser.add_argument("--dup", type=_probability, default=0.0, help="UDP: duplicate probability")
    parser.add_argument(
        "--reorder", type=_probability, default=0.0, help="UDP: hold-back probability"
    )
    parser.add_argument("--delay-ms", type=_delay, default=(0.0, 0.0), help="LO,HI (default 0,0)")
    parser.add_argument("--split", action="store_true", help="TCP: write in random small chunks")
    parser.add_argument("--max-chunk", type=int, default=1024, help="TCP: largest chunk (bytes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        listen, target = parse_address(args.listen), parse_address(args.target)
    except ValueError as exc:
        parser.error(str(exc))
    if args.max_chunk < 1:
        parser.error("--max-chunk must be at least 1")
    return Options(
        listen=listen,
        target=target,
        udp=args.udp,
        loss=args.loss,
        dup=args.dup,
        reorder=args.reorder,
        delay=args.delay_ms,
        split=args.split,
        max_chunk=args.max_chunk,
        seed=args.seed,
    )


class Relay:
    """The relay's state: options, the random generator and the counters."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.counters: Counter[str] = Counter(
            {"forwarded": 0, "dropped": 0, "duplicated": 0, "reordered": 0, "split": 0}
        )

    def delay(self) -> float:
        low, high = self.options.delay
        return self.rng.uniform(low, high) if high > 0 else 0.0

    # -- UDP -------------------------------------------------------------------

    async def serve_udp(self, task_status: trio.TaskStatus[str]) -> None:
        family = _family(self.options.listen[0])
        listen = trio.socket.socket(family, socket.SOCK_DGRAM)
        await listen.bind(self.options.listen)
        upstream_family = _family(self.options.target[0])
        flows: dict[Address, Callable[[bytes], None]] = {}
        async with trio.open_nursery() as nursery:
            task_status.started(format_address(listen.getsockname()))
            while True:
                data, client = await listen.recvfrom(MAX_DATAGRAM)
                client = (client[0], client[1])
                if client not in flows:
                    upstream = trio.socket.socket(upstream_family, socket.SOCK_DGRAM)
                    await upstream.bind(("::" if upstream_family == socket.AF_INET6 else "", 0))
                    await upstream.connect(self.options.target)
                    to_server = await nursery.start(self._direction, upstream.send)
                    to_client = await nursery.start(
                        self._direction, partial(_sendto, listen, client)
                    )
                    flows[client] = to_server
                    nursery.start_soon(self._from_server, upstream, to_client)
                flows[client](data)

    async def _from_server(
        self, upstream: trio.socket.SocketType, forward: Callable[[bytes], None]
    ) -> None:
        while True:
            try:
                data = await upstream.recv(MAX_DATAGRAM)
            except ConnectionRefusedError:  # ICMP port unreachable: the server is not there (yet)
                continue
            forward(data)

    async def _direction(
        self,
        send: Send,
        task_status: trio.TaskStatus[Callable[[bytes], None]],
    ) -> None:
        """One direction of one flow: decide each datagram's fate, send in order when due."""
        send_channel, receive_channel = trio.open_memory_channel[tuple[float, bytes]](math.inf)
        last_due = 0.0

        async with trio.open_nursery() as nursery:

            async def held(due: float, data: bytes) -> None:
                await trio.sleep_until(due)
                await _send_quietly(send, data)
                self.counters["forwarded"] += 1

            def offer(data: bytes) -> None:
                nonlocal last_due
                if self.rng.random() < self.options.loss:
                    self.counters["dropped"] += 1
                    return
                copies = 1
                if self.rng.random() < self.options.dup:
                    self.counters["duplicated"] += 1
                    copies = 2
                for _ in range(copies):
                    due = trio.current_time() + self.delay()
                    if self.rng.random() < self.options.reorder:
                        self.counters["reordered"] += 1
                        nursery.start_soon(held, due + self.rng.uniform(*REORDER_HOLD), data)
                    else:
                        last_due = max(last_due, due)  # never overtake an earlier datagram
                        send_channel.send_nowait((last_due, data))

            task_status.started(offer)
            async for due, data in receive_channel:
                await trio.sleep_until(due)
                await _send_quietly(send, data)
                self.counters["forwarded"] += 1

    # -- TCP -------------------------------------------------------------------

    async def serve_tcp(self, task_status: trio.TaskStatus[str]) -> None:
        host, port = self.options.listen
        listeners = await trio.open_tcp_listeners(port, host=host)
        address = format_address(listeners[0].socket.getsockname())
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._tcp_connection, listeners)
            task_status.started(address)

    async def _tcp_connection(self, client: trio.SocketStream) -> None:
        async with client:
            try:
                server = await trio.open_tcp_stream(*self.options.target)
            except OSError:
                return
            async with server, trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
                nursery.start_soon(self._pump, server, client, nursery.cancel_scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                if not self.options.split:
                    await sink.send_all(data)
                    self.counters["forwarded"] += 1
                    continue
                view = memoryview(data)
                while view:
                    size = self.rng.randint(1, self.options.max_chunk)
                    pause = self.delay()
                    if pause:
                        await trio.sleep(pause)
                    await sink.send_all(view[:size])
                    view = view[size:]
                    self.counters["forwarded"] += 1
                    self.counters["split"] += 1 if view else 0
            await sink.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            scope.cancel()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def _sendto(sock: trio.socket.SocketType, address: Address, data: bytes) -> None:
    await sock.sendto(data, address)


async def _send_quietly(send: Send, data: bytes) -> None:
    """Send one datagram; a network that refuses it has simply lost it."""
    with contextlib.suppress(OSError):
        await send(data)


async def run(options: Options) -> Counter[str]:
    relay = Relay(options)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            serve = relay.serve_udp if options.udp else relay.serve_tcp
            address = await nursery.start(serve)
            print(address, flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    return relay.counters


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    counters = trio.run(run, options)
    print("counters " + json.dumps(dict(counters), sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
