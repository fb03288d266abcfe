"""OpenSSL's own cost, the floor of the benchmark suite: two TLS (or DTLS) ends in memory.

    python benchmarks/floor.py KIND PKI [--mtls]

No sockets, no event loop, no threads: a client and a server pumped against
each other through memory BIOs in one thread, doing exactly what the
suite's load client and an echo server do over the network (a handshake
and its close_notify exchange; a record in, the same record back). Only the
*server's* calls are timed, with the thread's CPU clock, so the figure is
comparable with the server CPU per operation the suite reads from
``/proc/PID/stat`` for the real servers. Echo records are pumped in batches
of 64 with the clock read around the whole batch, so reading it costs
nothing per record. KIND says which library is on each side:

* ``floor``: our sans-IO :class:`~trio_tls_dtls.TLSEngine` /
  :class:`~trio_tls_dtls.DTLSEngine` on both sides, with the contexts our
  server and load client build: pyOpenSSL on the OpenSSL bundled with
  ``cryptography`` (4.0), the library under ``ours`` and ``trio-dtls``. It
  includes pyOpenSSL's per-call wrappers and our thin engine, nothing else.
* ``floor-stdlib``: a stdlib ``ssl.SSLObject`` server (the system's OpenSSL
  3.0, the library under ``trio-tls``, ``asyncio`` and ``uvloop``, with
  their context) against our engine as client, as the load client talks to
  them. TLS only.
* ``floor-x25519``: our engine as server against a stdlib ``ssl`` client.
  OpenSSL 3.0 offers no ML-KEM, so this is the OpenSSL 4.0 server on the
  classic X25519 key exchange that the stdlib peers negotiate: the
  difference to ``floor`` is the hybrid post-quantum group alone. TLS only.

Protocol (for the suite): prints ``READY 0``, then answers each JSON command
on stdin with one JSON line on stdout::

    {"cmd": "run", "proto": "tls", "mode": "handshake", "size": 0, "seconds": 3,
     "resume": false}
      -> {"ops": N, "cpu": S, "bytes": B, "protocol": "TLSv1.3", "group": ..., ...}
    {"cmd": "memory", "proto": "tls", "count": 1000}
      -> {"kib_per_connection": K, "connections": N, ...}

``memory`` keeps *count* handshaken server ends (one echo each) and drops
their clients, then reads the growth of this process's RSS: OpenSSL's (and
the engine's) memory per idle connection, with nothing of Trio in it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from servers import stdlib_server_context

from trio_tls_dtls import (
    CertificateSettings,
    ClientSettings,
    DTLSEngine,
    ServerSettings,
    TLSEngine,
    VerifyClient,
)

# Not part of the public API: the floor must use the very contexts our
# server and client build, options and all. One import to fix if they move.
from trio_tls_dtls.core.contexts import build_client_context, build_server_context

KINDS = ("floor", "floor-stdlib", "floor-x25519")
BATCH = 64
clock = time.thread_time


# -- one end of a connection, whichever library -------------------------------------
#
# Each end exposes feed/out/step/send/recv/close as plain attributes (bound
# methods where possible), so the timed loops pay no adapter frame per call.


class EngineEnd:
    """Our TLSEngine: pyOpenSSL on the OpenSSL bundled with cryptography."""

    def __init__(self, engine: TLSEngine) -> None:
        self.engine = engine
        self.feed = engine.receive_bytes
        self.out = engine.bytes_to_send
        self.step = engine.do_handshake
        self.send = engine.send
        self.close = engine.close
        self._receive = engine.receive

    def recv(self) -> bytes | None:
        return self._receive(65536)

    def session(self) -> Any:
        return self.engine.session

    def negotiated(self) -> dict[str, str]:
        conn = self.engine.connection
        group = getattr(conn, "get_group_name", lambda: None)()
        return {
            "protocol": conn.get_protocol_version_name(),
            "cipher": conn.get_cipher_name() or "",
            "group": group or "",
        }


class StdlibEnd:
    """A stdlib ``ssl.SSLObject`` between two MemoryBIOs (the system's OpenSSL)."""

    def __init__(self, ctx: ssl.SSLContext, server_side: bool, session: Any = None) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(
            incoming,
            outgoing,
            server_side=server_side,
            server_hostname=None if server_side else "localhost",
            session=session,
        )
        self.feed = incoming.write
        self.out = outgoing.read
        self.send = self.obj.write

    def step(self) -> bool:
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def recv(self) -> bytes | None:
        try:
            return self.obj.read(65536)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLZeroReturnError:
            return b""

    def close(self) -> None:
        # SSLWantReadError: our close_notify is out; the peer's has not come yet.
        with contextlib.suppress(ssl.SSLWantReadError):
            self.obj.unwrap()

    def session(self) -> Any:
        return self.obj.session

    def negotiated(self) -> dict[str, str]:
        return {"protocol": self.obj.version() or "", "cipher": (self.obj.cipher() or ("",))[0]}


End = EngineEnd | StdlibEnd


class Floor:
    """Makes both ends for one KIND and runs the measured loops."""

    def __init__(self, kind: str, pki: Path, mtls: bool) -> None:
        self.kind = kind
        cert = CertificateSettings(pki / "server.pem", pki / "server.key")
        server = ServerSettings(
            certificate=cert,
            ca_file=pki / "ca.pem" if mtls else None,
            verify_client=VerifyClient.REQUIRED if mtls else VerifyClient.NONE,
        )
        client_cert = CertificateSettings(pki / "client.pem", pki / "client.key") if mtls else None
        client = ClientSettings(ca_file=pki / "ca.pem", certificate=client_cert)
        self.mtu = server.mtu
        self.server_ctx = build_server_context(server)
        self.client_ctx = build_client_context(client)
        self.dtls_server_ctx = build_server_context(server, dtls=True)
        self.dtls_client_ctx = build_client_context(client, dtls=True)
        self.stdlib_server_ctx = stdlib_server_context(pki, mtls)
        self.stdlib_client_ctx = ssl.create_default_context(cafile=pki / "ca.pem")
        if mtls:
            self.stdlib_client_ctx.load_cert_chain(pki / "client.pem", pki / "client.key")

    def new_server(self) -> End:
        if self.kind == "floor-stdlib":
            return StdlibEnd(self.stdlib_server_ctx, server_side=True)
        return EngineEnd(TLSEngine.server(self.server_ctx))

    def new_client(self, session: Any = None) -> End:
        if self.kind == "floor-x25519":
            return StdlibEnd(self.stdlib_client_ctx, server_side=False, session=session)
        return EngineEnd(TLSEngine.client(self.client_ctx, "localhost", session=session))

    # -- TLS ---------------------------------------------------------------------

    def handshake(self, session: Any = None) -> tuple[End, End, float]:
        """A full (or, with *session*, resumed) handshake: client, server, server CPU."""
        client = self.new_client(session)
        t0 = clock()
        server = self.new_server()
        cpu = clock() - t0
        client_done = client.step()
        server_done = False
        for _ in range(10):  # TLS 1.3 needs 2 server steps, TLS 1.2 with tickets 3
            data = client.out()
            t0 = clock()
            server.feed(data)
            server_done = server.step()
            reply = server.out()
            cpu += clock() - t0
            client.feed(reply)
            client_done = client.step()
            if client_done and server_done:
                break
        if not (client_done and server_done):
            raise RuntimeError("the in-memory handshake did not complete")
        client.recv()  # the tickets, so that the client has a session to resume
        return client, server, cpu

    def close(self, client: End, server: End) -> float:
        """The close_notify exchange the load client ends each connection with."""
        client.close()
        data = client.out()
        t0 = clock()
        server.feed(data)
        server.recv()
        server.close()
        server.out()
        return clock() - t0

    def run_tls(self, mode: str, size: int, seconds: float, resume: bool) -> dict[str, Any]:
        session = None
        if resume:
            client, server, _ = self.handshake()
            session = client.session()
        client, server, _ = self.handshake(session)
        info: dict[str, Any] = (client if isinstance(client, EngineEnd) else server).negotiated()
        info["resumed"] = bool(resume and _resumed(client, server))
        ops = total = 0
        cpu = 0.0
        deadline = time.monotonic() + seconds
        if mode == "handshake":
            while time.monotonic() < deadline:
                client, server, spent = self.handshake(session)
                cpu += spent + self.close(client, server)
                ops += 1
        else:
            payload = os.urandom(size)
            while time.monotonic() < deadline:
                cpu += _echo_batch(client, server, payload)
                ops += BATCH
                total += BATCH * size
        return {"ops": ops, "cpu": cpu, "bytes": total, **info}

    # -- DTLS --------------------------------------------------------------------

    def dtls_handshake(self) -> tuple[DTLSEngine, DTLSEngine, float]:
        """Cookie exchange (OpenSSL's own DTLSv1_listen) and a DTLS 1.2 handshake."""
        client = DTLSEngine.connect(self.dtls_client_ctx, "localhost", mtu=self.mtu)
        client.do_handshake()
        (hello,) = client.datagrams_to_send()
        t0 = clock()
        listener = SSL.Connection(self.dtls_server_ctx, None)
        listener.set_accept_state()
        listener.bio_write(hello)
        # WantReadError: it wrote a HelloVerifyRequest, as the client has no cookie yet.
        with contextlib.suppress(SSL.WantReadError):
            listener.DTLSv1_listen()
        verify_request = listener.bio_read(65536)
        cpu = clock() - t0
        client.receive_datagram(verify_request)
        client.do_handshake()
        (hello,) = client.datagrams_to_send()
        t0 = clock()
        server = DTLSEngine.accept(self.dtls_server_ctx, hello, mtu=self.mtu)
        server_done = server.do_handshake()
        replies = server.datagrams_to_send()
        cpu += clock() - t0
        client_done = False
        for _ in range(10):
            for datagram in replies:
                client.receive_datagram(datagram)
                client_done = client.do_handshake()
            if client_done and server_done:
                break
            sent = client.datagrams_to_send()
            t0 = clock()
            for datagram in sent:
                server.receive_datagram(datagram)
                server_done = server.do_handshake()
            replies = server.datagrams_to_send()
            cpu += clock() - t0
        if not (client_done and server_done):
            raise RuntimeError("the in-memory DTLS handshake did not complete")
        return client, server, cpu

    def dtls_close(self, client: DTLSEngine, server: DTLSEngine) -> float:
        client.close()
        sent = client.datagrams_to_send()
        t0 = clock()
        for datagram in sent:
            server.receive_datagram(datagram)
            server.receive_messages()
        server.close()
        server.datagrams_to_send()
        return clock() - t0

    def run_dtls(self, mode: str, size: int, seconds: float) -> dict[str, Any]:
        client, server, _ = self.dtls_handshake()
        info = EngineEnd(client).negotiated()
        ops = total = 0
        cpu = 0.0
        deadline = time.monotonic() + seconds
        if mode == "handshake":
            while time.monotonic() < deadline:
                client, server, spent = self.dtls_handshake()
                cpu += spent + self.dtls_close(client, server)
                ops += 1
        else:
            payload = os.urandom(size)
            while time.monotonic() < deadline:
                cpu += _dtls_echo_batch(client, server, payload)
                ops += BATCH
                total += BATCH * size
        return {"ops": ops, "cpu": cpu, "bytes": total, **info}

    # -- memory ------------------------------------------------------------------

    def memory(self, proto: str, count: int) -> dict[str, Any]:
        """RSS growth per idle server end (handshaken, one echo), clients dropped."""

        def one() -> Any:
            if proto == "dtls":
                dclient, dserver, _ = self.dtls_handshake()
                _dtls_echo_batch(dclient, dserver, b"hello", batch=1)
                return dserver
            client, server, _ = self.handshake()
            _echo_batch(client, server, b"hello", batch=1)
            return server

        warm = [one() for _ in range(50)]  # one-off allocations are not per connection
        del warm
        before = _settled_rss()
        held = [one() for _ in range(count)]
        after = _settled_rss()
        assert len(held) == count
        return {
            "connections": count,
            "rss_before_mib": round(before / 2**20, 1),
            "rss_after_mib": round(after / 2**20, 1),
            "kib_per_connection": round((after - before) / count / 1024, 1),
        }


def _resumed(client: End, server: End) -> bool:
    for end in (server, client):
        if isinstance(end, StdlibEnd):
            return bool(end.obj.session_reused)
    assert isinstance(server, EngineEnd)
    return server.engine.peer_info(None).resumed


def _echo_batch(client: End, server: End, payload: bytes, batch: int = BATCH) -> float:
    """*batch* records through the server and back; the server's CPU time."""
    size = len(payload)
    records = []
    for _ in range(batch):
        client.send(payload)
        records.append(client.out())
    replies = []
    t0 = clock()
    feed, recv, send, out = server.feed, server.recv, server.send, server.out
    for record in records:
        feed(record)
        got = 0
        while got < size:
            data = recv()
            if not data:
                raise RuntimeError("the server end read nothing from a whole record")
            got += len(data)
            send(data)
        replies.append(out())
    cpu = clock() - t0
    for reply in replies:
        client.feed(reply)
        got = 0
        while got < size:
            data = client.recv()
            if not data:
                raise RuntimeError("the echo did not come back whole")
            got += len(data)
    return cpu


def _dtls_echo_batch(
    client: DTLSEngine, server: DTLSEngine, payload: bytes, batch: int = BATCH
) -> float:
    sent = []
    for _ in range(batch):
        client.send_message(payload)
        sent.extend(client.datagrams_to_send())
    replies = []
    t0 = clock()
    for datagram in sent:
        server.receive_datagram(datagram)
        for message in server.receive_messages():
            server.send_message(message)
        replies.extend(server.datagrams_to_send())
    cpu = clock() - t0
    back = 0
    for datagram in replies:
        client.receive_datagram(datagram)
        back += len(client.receive_messages())
    if back != batch:
        raise RuntimeError(f"{batch} DTLS echoes sent, {back} came back")
    return cpu


def _settled_rss() -> int:
    """RSS after a collection and handing freed heap pages back (glibc's malloc_trim)."""
    gc.collect()
    # Not glibc: the figure includes freed but kept heap.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def serve_commands(floor: Floor, commands: Any, reply: Callable[[dict[str, Any]], None]) -> None:
    for line in commands:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            return
        proto = cmd["proto"]
        if proto == "dtls" and floor.kind != "floor":
            reply({"error": f"{floor.kind} is TLS only"})
        elif cmd["cmd"] == "memory":
            reply(floor.memory(proto, int(cmd["count"])))
        elif proto == "dtls":
            reply(floor.run_dtls(cmd["mode"], int(cmd["size"]), float(cmd["seconds"])))
        else:
            result = floor.run_tls(
                cmd["mode"], int(cmd["size"]), float(cmd["seconds"]), bool(cmd.get("resume"))
            )
            reply(result)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("pki", type=Path)
    parser.add_argument("--mtls", action="store_true")
    args = parser.parse_args()
    floor = Floor(args.kind, args.pki, args.mtls)
    print("READY 0", flush=True)

    def reply(result: dict[str, Any]) -> None:
        print(json.dumps(result), flush=True)

    serve_commands(floor, sys.stdin, reply)
    return 0


if __name__ == "__main__":
    sys.exit(main())
