"""The service: both listeners in one nursery, supervised.

What lives here
---------------
* :class:`~.service.Service`: the TLS listener and the DTLS endpoint side by
  side in one nursery, started together, drained together, reloaded
  together (certificates, OCSP staples) without dropping a connection.
* Workers (:mod:`.workers`): processes sharing one port with SO_REUSEPORT,
  one set of ticket keys and one cookie secret.
* Handlers (echo in the drivers; :mod:`.forward` for TCP/UDP backends),
  metrics (:mod:`.metrics`), the connection log format, privilege dropping.

What may be imported
--------------------
The drivers and the core, trio, prometheus_client. Never the CLI.

Invariants kept here
--------------------
* A drain is bounded: new connections stop, every open one gets
  close_notify, and whatever is left when the drain timeout passes is cut.
* A reload never costs availability: a bad certificate file keeps the old
  contexts and says why; established connections keep theirs.
"""
