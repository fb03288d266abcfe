"""Trio drivers: sockets, deadlines, cancellation and the crypto offload.

What lives here
---------------
* :class:`~.tls.stream.TLSStream` (a ``trio.abc.Stream``) and
  :class:`~.dtls.channel.DTLSChannel` (a ``trio.abc.Channel[bytes]``), each a
  thin loop around a core engine.
* The servers: the TLS accept loop and the DTLS endpoint, which carries out
  what the core's cookie gate decides for each datagram.
* One lifecycle (:mod:`.lifecycle`) for a TLS connection and a DTLS peer:
  admission, handshake with a deadline, handler with the idle deadline,
  close, and a close record handed to a sink. Drivers emit close records;
  they do not write access lines or own metrics (the service does, and a
  server used alone falls back to counting into its stats and logging).
* The clients (``open_tls_stream``, ``open_dtls_channel``) and their
  session cache (one per ``ClientSettings`` object), the listeners.
* The engine guard (:mod:`.engine_guard`): one per stream or channel, the
  only way to an engine. It keeps one thread per SSL object and decides
  which calls run in a worker thread of the shared :mod:`.offload` pool.

What may be imported
--------------------
trio, sockets, threads, and :mod:`trio_tls_dtls.core`. Never the service or
the CLI (import-linter enforces it). No protocol decisions are made here:
the drivers move bytes, keep time and run the handler.

Invariants kept here
--------------------
* One SSL object, one thread at a time: every engine call goes through the
  owning stream's or channel's EngineGuard, and an offloaded call holds the
  guard's lock until its thread returns (never abandoned on cancellation).
* Every wait on the network has a deadline: the handshake (``fail_after``),
  idleness (the connection's own cancel scope), the goodbye after the handler.
* A cancelled send never duplicates bytes: once data has entered the engine,
  a cancellation marks the sending side broken rather than let a retry
  encrypt it twice.
* A failure in one connection or peer is caught, counted and logged in its
  own task; only cancellation reaches the server's nursery.
"""
