"""``trio-tlsd``: the command line on top of the service.

Commands: ``serve``, ``certs``, ``client``, ``bench``, ``check-config``,
``cookie-secret``. This layer turns flags and the TOML config file into
settings, makes the development PKI, configures logging, and turns every
error a user can cause into one line on stderr with exit status 2.

It may import everything below it (service, drivers, core); nothing imports
it. ``bench/`` is the ``trio-tlsd bench`` load generator that users run
against any server; the repository's ``benchmarks/`` folder is the
side-by-side suite that compares servers and is not installed.
"""
