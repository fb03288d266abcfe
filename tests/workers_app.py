"""A program built on the library entry point :func:`serve_workers`, for tests.

``python -m tests.workers_app PORT CERT KEY [COUNT [exit-on-reload | metrics=P]]``: every
worker's TLS and DTLS handlers first send the worker's process ID (as ASCII
digits), then echo. The client thus learns which worker served it.

With ``exit-on-reload`` the parent leaves by an ordinary ``sys.exit(0)`` from
inside its reload (a SIGHUP), with its workers still running: what a
supervisor that ends without stopping them looks like to them. With
``metrics=P`` the supervisor serves every worker's metrics on 127.0.0.1:P.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from trio_tls_dtls import CertificateSettings, ServerSettings
from trio_tls_dtls.core.peer_info import PeerInfo
from trio_tls_dtls.drivers.dtls.channel import DTLSChannel
from trio_tls_dtls.drivers.tls.stream import TLSStream
from trio_tls_dtls.service import workers
from trio_tls_dtls.service.serving_process import OperatorPorts
from trio_tls_dtls.service.workers import serve_workers


async def tls_pid_then_echo(stream: TLSStream, peer: PeerInfo) -> None:
    await stream.send_all(str(os.getpid()).encode())
    while data := await stream.receive_some():
        await stream.send_all(data)


async def dtls_pid_then_echo(channel: DTLSChannel, peer: PeerInfo) -> None:
    await channel.send(str(os.getpid()).encode())
    async for message in channel:
        await channel.send(message)


def main(argv: list[str]) -> int:
    port, cert, key = int(argv[0]), Path(argv[1]), Path(argv[2])
    count = int(argv[3]) if len(argv) > 3 else 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    extra = argv[4] if len(argv) > 4 else ""
    if extra == "exit-on-reload":
        _exit_on_reload()
    metrics_port = int(extra.removeprefix("metrics=")) if extra.startswith("metrics=") else None
    settings = ServerSettings(certificate=CertificateSettings(cert, key), drain_timeout=10.0)
    return serve_workers(
        settings,
        port,
        count=count,
        host="127.0.0.1",
        tls_handler=tls_pid_then_echo,
        dtls_handler=dtls_pid_then_echo,
        max_restarts=5,
        operator=OperatorPorts(metrics_port=metrics_port),
    )


def _exit_on_reload() -> None:
    """The supervisor's second prepare (its reload) ends the supervisor process."""

    class ExitOnReload(workers.SharedStateSource):
        calls = 0

        def __call__(self) -> workers.SharedState:
            self.calls += 1
            if self.calls > 1:
                print("workers_app: supervisor exiting", file=sys.stderr, flush=True)
                sys.exit(0)
            return super().__call__()

    workers.SharedStateSource = ExitOnReload  # type: ignore[misc]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
