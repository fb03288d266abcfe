"""Our server with its handshakes in threads, inline and "auto", side by side.

    python benchmarks/offload_modes.py [--only W1] [--rounds N] [--duration S]

``OffloadSettings(handshakes=...)`` decides where the public-key steps of a
handshake run: ``True`` in worker threads, ``False`` on the event loop,
``"auto"`` (the default) in a thread only when that pays (see
:mod:`trio_tls_dtls.drivers.offload`). This runs the handshake workloads
(W1, W2, W5) against the three, alternated, the server pinned to CPU 0 and
the load to CPU 1 as ``compare_commits.py`` does, and prints server CPU per
handshake. Pinned to one CPU, "auto" runs everything inline: a thread
cannot run beside the loop there. ``--cpus 0,1`` leaves the servers on both
cores (the load still on CPU 1), where "auto" offloads when the loop has a
backlog, as a server with cores to spare would.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare_commits  # noqa: E402
from compare_commits import LOAD_CPU, WORKLOADS, measure_servers  # noqa: E402

from trio_tls_dtls.cli.dev_pki import make_dev_pki, write_dev_pki  # noqa: E402

MODES = {"threads": "-threads", "inline": "-inline", "auto": ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run only workloads whose name contains this")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--cpus", default="0", help="CPUs for the servers (default: 0)")
    opts = parser.parse_args(argv)
    os.sched_setaffinity(0, {LOAD_CPU})
    compare_commits.SERVER_CPUS = {int(c) for c in opts.cpus.split(",")}
    with tempfile.TemporaryDirectory() as scratch:
        pki = Path(scratch) / "pki"
        write_dev_pki(pki, make_dev_pki())
        for w in WORKLOADS:
            if w.mode != "handshake" or (opts.only and opts.only not in w.name):
                continue
            specs = {mode: (HERE.parent, w.kind + suffix) for mode, suffix in MODES.items()}
            per = measure_servers(w, specs, pki, opts.rounds, opts.duration)
            threads = per["threads"][0]
            cells = "   ".join(
                f"{mode} {us:7.1f} µs ({us / threads:4.2f}x)" for mode, (us, _) in per.items()
            )
            print(f"{w.name:<26} {cells}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
