"""The TLS drivers: see :mod:`trio_tls_dtls.drivers`."""
