"""The DTLS drivers: see :mod:`trio_tls_dtls.drivers`."""
