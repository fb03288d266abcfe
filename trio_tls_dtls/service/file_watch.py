"""Noticing that certificate files changed, by looking at them now and then.

Kubernetes mounts a Secret as a folder of symbolic links::

    server.pem -> ..data/server.pem
    ..data     -> ..2026_01_31_12_00_00.123456789/
    ..2026_01_31_12_00_00.123456789/server.pem

and updates it by writing a new timestamped folder, then renaming a new
``..data`` link over the old one (one atomic rename), then deleting the old
folder. Nothing writes to ``server.pem`` itself, so a watch on it (inotify on
the file or its folder) hears nothing. Looking is simple and works the same
everywhere: :meth:`FileWatch.changed` stats each path, following the links,
and compares device, inode, size and modification time with the last look.
A file replaced by any means (a new folder, ``mv`` over it, an edit in
place) shows up as a new inode or a new size or time.

The caller reloads when something changed. A reload that fails (a key that
does not match its certificate yet, a file half copied) keeps the old
contexts and is logged by the reload; the next look sees the same files, so
nothing is retried or logged again until they change once more.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.settings import ServerSettings

__all__ = ["FileWatch", "watched_files"]

_Look = tuple[int, int, int, int] | None  # device, inode, size, mtime; None: not there


def watched_files(settings: ServerSettings) -> tuple[Path, ...]:
    """Every file a reload reads: certificates, keys, OCSP staples, the client CA and CRL, PSKs."""
    paths: list[Path | None] = [settings.ca_file, settings.crl_file, settings.psk_file]
    for cert in (settings.certificate, *settings.sni_certificates):
        if cert is not None:
            paths += [cert.cert_file, cert.key_file, cert.ocsp_staple_file]
    return tuple(dict.fromkeys(p for p in paths if p is not None))


def _look(path: Path) -> _Look:
    try:
        st = os.stat(path)  # follows symbolic links: the file a reload would read
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileWatch:
    """The state of some files at the last look; see the module docstring."""

    def __init__(self, paths: tuple[Path, ...]) -> None:
        self.paths = paths
        self._seen = [_look(path) for path in paths]

    def changed(self) -> list[Path]:
        """The files that differ from the last look (which this call becomes)."""
        now = [_look(path) for path in self.paths]
        changed = [
            path for path, old, new in zip(self.paths, self._seen, now, strict=True) if old != new
        ]
        self._seen = now
        return changed

    @staticmethod
    def describe(paths: list[Path]) -> str:
        """``server.pem, server.key changed``: for the log line of a reload."""
        return ", ".join(str(path) for path in paths) + " changed"
