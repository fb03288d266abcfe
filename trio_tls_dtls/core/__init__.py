"""The sans-IO core: TLS and DTLS as bytes in, bytes out, and decisions.

What lives here
---------------
* The engines (:mod:`.tls_engine`, :mod:`.dtls_engine`; both names in
  :mod:`.engine`): a pyOpenSSL ``Connection`` between two memory BIOs.
  Ciphertext goes in, plaintext and ciphertext-to-send come out; "I need
  more input" is a return value, not an exception.
* DTLS before any connection exists: the record peek and ClientHello parser
  (:mod:`.dtls_records`), the stateless cookie (:mod:`.dtls_cookie`), the
  cookie gate (:mod:`.cookie_gate`) that decides, per datagram, what an
  endpoint does with it, and the bounded peer table (:mod:`.peer_table`).
* Policy as data: settings (:mod:`.settings`), contexts built once and then
  shared read-only (:mod:`.contexts`), the front contexts that keep
  session-ticket keys across reloads and rotate them (:mod:`.ticket_keys`,
  choosing by the ticket a ClientHello offers, :mod:`.client_hello`),
  per-source limits
  (:mod:`.source_limits`), the PROXY protocol parser
  (:mod:`.proxy_protocol`) and builder (:mod:`.proxy_header_builder`, with
  the TLS facts as TLVs in :mod:`.proxy_tlvs`), PEM loading, OCSP checks,
  errors, PeerInfo, pre-shared keys (:mod:`.psk`) and client identity rules
  and CRLs (:mod:`.client_identity`).
* Calls into the OpenSSL bindings under pyOpenSSL, in three modules only:
  :mod:`.ssl_calls` (the per-record calls, without pyOpenSSL's per-call
  wrappers), :mod:`._ossl` (plain calls pyOpenSSL does not expose) and
  :mod:`._ossl_callbacks` (PSK, strict ALPN and the identity-checking
  verify callback).

What may be imported
--------------------
The standard library (minus I/O and threads), ``cryptography`` and
pyOpenSSL. Never trio, ``socket``, ``threading``, ``asyncio`` or
``prometheus_client``: import-linter enforces it in ``nox -s lint`` and
``tests/core/test_sans_io_imports.py`` checks what a fresh interpreter loads.
Nothing on the per-connection or per-datagram path reads a clock: time
comes in as an argument (the cookie gate, the per-source limits, ticket-key
fronts), which lets the tests drive every branch with bytes and numbers. The
one exception is checks of files when contexts are built (certificate,
CRL and OCSP validity), which default to the wall clock and take ``now=``
in tests.

Invariants kept here
--------------------
* No per-peer DTLS state exists before a valid cookie: the gate answers an
  unverified ClientHello with a HelloVerifyRequest no larger than it, built
  from the datagram alone (:func:`.cookie_gate.decide`).
* Every loop over peer input is bounded: record and header lengths are
  checked before they are trusted, the peer table and per-source tables have
  a maximum size.
* One SSL object is used by one thread at a time. The core cannot enforce
  it (it has no threads); it documents it on every engine, and the drivers'
  EngineGuard keeps it.
"""
