"""The service: both listeners in one nursery, supervised.

What lives here
---------------
* :class:`~.service.Service`: the TLS listener and the DTLS endpoint side by
  side in one nursery, started together, drained together, reloaded
  together (certificates, OCSP staples) without dropping a connection.
* Signals and drain, in one place for a single process and for every
  worker: :mod:`.signals` (what SIGINT, SIGTERM and SIGHUP mean; the first
  stop drains, the second stops at once; the exit status; no Trio, so the
  supervisor uses it too), :mod:`.drain` (the bounded drain, driven by
  those signals) and :mod:`.serving_process` (bind, serve, stop, the
  summary line: the life of one serving process).
* Workers (:mod:`.workers`): processes sharing one port with SO_REUSEPORT,
  one set of ticket keys and one cookie secret; each runs
  :func:`~.serving_process.serve_process` on sockets the supervisor bound
  for its slot (:mod:`.worker_sockets`), watches its lifeline to the
  supervisor (:mod:`.lifeline`), and is restarted within a per-slot budget
  (:mod:`.restart_budget`). The supervisor answers the one metrics and
  health endpoint for all of them (:mod:`.supervisor_endpoint`, adding up
  their series with :mod:`.metrics_merge`).
* After a burst, freed memory goes back to the system (:mod:`.memory_trim`).
* Handlers (echo in the drivers; :mod:`.forward` for TCP/UDP backends,
  optionally told the client by a PROXY header), metrics (:mod:`.metrics`;
  formats, gzip and build info in :mod:`.exposition`, certificate expiry in
  :mod:`.certificate_expiry`),
  health and readiness (:mod:`.health`; both over the small HTTP server of
  :mod:`.http_endpoint`), the access log (:mod:`.access_log`: the sink both
  servers send their close records to; it counts each once and writes the
  access line), the log formats, privilege dropping.

What may be imported
--------------------
The drivers and the core, trio, prometheus_client. Never the CLI.

Invariants kept here
--------------------
* A drain is bounded: new connections stop, every open one gets
  close_notify, and whatever is left when the drain timeout passes is cut.
  Before it, a stop makes the service not ready at once (``/readyz``) and
  may keep accepting for ``drain_delay`` seconds.
* A reload never costs availability: a bad certificate file keeps the old
  contexts and says why; established connections keep theirs.
"""
