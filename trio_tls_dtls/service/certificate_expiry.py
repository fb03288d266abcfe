"""``trio_tlsd_certificate_not_after_timestamp_seconds``: when each served certificate expires.

One series per certificate file the service serves (the default one and
every SNI certificate), labelled with the file and the leaf's subject; the
value is the leaf's notAfter as a Unix time, so that an alert is
``trio_tlsd_certificate_not_after_timestamp_seconds - time() < 14 * 86400``.

The files are read again only when the service has reloaded (its reload
count moved) since the last scrape: what is reported is what was loaded, up
to a file changed on disk and not yet reloaded. A file that cannot be read
or parsed then has no series (the reload that read it would have failed and
kept the old certificate; the next successful reload brings it back).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..core.settings import ServerSettings
from .service import Service

__all__ = ["CertificateExpiry", "certificate_not_after"]

NAME = "trio_tlsd_certificate_not_after"


def certificate_not_after(settings: ServerSettings) -> list[tuple[str, str, float]]:
    """``(file, subject, notAfter as Unix time)`` of each certificate *settings* serve."""
    files: list[Path] = []
    if settings.certificate is not None:
        files.append(settings.certificate.cert_file)
    files.extend(sni.cert_file for sni in settings.sni_certificates)
    facts = []
    for path in dict.fromkeys(files):  # one series per file, in order
        try:
            leaf = x509.load_pem_x509_certificates(path.read_bytes())[0]
        except (OSError, ValueError, IndexError):
            continue
        facts.append(
            (str(path), leaf.subject.rfc4514_string(), leaf.not_valid_after_utc.timestamp())
        )
    return facts


class CertificateExpiry(Collector):
    """The not-after series of *service*'s certificates (see the module docstring)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._read_at: int | None = None  # service.reloads when the files were read
        self._facts: list[tuple[str, str, float]] = []

    def collect(self) -> Iterator[Metric]:
        if self._read_at != self.service.reloads:
            self._facts = certificate_not_after(self.service.settings)
            self._read_at = self.service.reloads
        family = GaugeMetricFamily(
            NAME + "_timestamp_seconds",
            "When each served certificate (default and SNI) expires, as a Unix time",
            labels=["file", "subject"],
        )
        for path, subject, not_after in self._facts:
            family.add_metric([path, subject], not_after)
        yield family
