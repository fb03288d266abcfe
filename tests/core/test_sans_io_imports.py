"""The sans-IO core, as a process sees it: importing it loads no I/O layer.

import-linter (``nox -s lint``) checks the source; this checks what a fresh
interpreter actually loads, which also catches an import hidden behind a
package ``__init__`` (the top-level package re-exports lazily for this).
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import trio_tls_dtls.core

FORBIDDEN = ("trio", "socket", "threading", "asyncio", "prometheus_client", "selectors")

# cryptography.x509 and pyOpenSSL load the stdlib socket module (through
# email.utils) before any of our code runs; what we check is that the core
# itself adds none of the forbidden modules on top of its dependencies.
_PROBE = """
import importlib, json, sys
import cryptography.x509, OpenSSL.SSL
before = set(sys.modules)
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
added = sorted(set(sys.modules) - before)
print(json.dumps(added))
"""


def core_modules() -> list[str]:
    prefix = trio_tls_dtls.core.__name__ + "."
    return [info.name for info in pkgutil.walk_packages(trio_tls_dtls.core.__path__, prefix)]


def test_core_has_modules() -> None:
    assert "trio_tls_dtls.core.engine" in core_modules()
    assert "trio_tls_dtls.core.dtls_cookie" in core_modules()


def test_importing_the_core_loads_no_io_layer() -> None:
    names = core_modules()
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(names)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    added = json.loads(out)
    assert set(names) <= set(added)  # the probe really imported them
    leaked = [m for m in added if m.split(".")[0] in FORBIDDEN]
    assert leaked == []
