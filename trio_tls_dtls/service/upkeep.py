"""What one serving process does on its own schedule: reload on changed files, rotate ticket keys.

:func:`upkeep` runs beside the service in a single process
(:func:`~trio_tls_dtls.service.serving_process.serve_process` starts it):

* every ``settings.reload_interval`` seconds it looks at the certificate,
  key, CA and OCSP files (:mod:`.file_watch`) and, when one changed, asks for
  a reload by the same path as SIGHUP (:meth:`GracefulStop.reload
  <trio_tls_dtls.service.drain.GracefulStop.reload>`);
* every ``settings.ticket_key_rotation`` seconds it gives the service new
  session-ticket keys, the previous ones still opening tickets until the
  next rotation (:mod:`trio_tls_dtls.core.ticket_keys`).

With ``--workers`` the supervisor does both instead, for every worker at
once (:mod:`.workers`): keys made in one worker would not open tickets
sealed in another.
"""

from __future__ import annotations

import trio

from ..core.ticket_keys import issues_tickets
from .drain import GracefulStop
from .file_watch import FileWatch
from .service import Service

__all__ = ["upkeep"]


async def upkeep(stop: GracefulStop) -> None:
    """Watch the files and rotate the keys of ``stop.service`` until cancelled (0 = off)."""
    settings = stop.service.settings
    async with trio.open_nursery() as nursery:
        if settings.reload_interval:
            nursery.start_soon(_reload_on_change, stop, settings.reload_interval)
        if settings.ticket_key_rotation and issues_tickets(settings):
            nursery.start_soon(_rotate_ticket_keys, stop.service, settings.ticket_key_rotation)


async def _reload_on_change(stop: GracefulStop, interval: float) -> None:
    # A handful of stat calls every few seconds: cheaper inline than a thread hop.
    # service.files was taken before the files were first read, and again at
    # each reload, so a change is neither missed nor (after a SIGHUP) reloaded twice.
    while True:
        await trio.sleep(interval)
        if changed := stop.service.files.changed():
            stop.reload(FileWatch.describe(changed))


async def _rotate_ticket_keys(service: Service, every: float) -> None:
    while True:
        await trio.sleep(every)
        service.rotate_ticket_keys()
