"""The README's commands and code are the ones that work and are checked.

* Its two set-up commands install into a virtual environment (a system
  Python, Debian's above all, must not be changed or refuses to be), and the
  test command is the one ``.ci/run`` runs, verbatim.
* Its Python snippets are the files docs/examples/readme_*.py, which
  ``nox -s typecheck`` runs ``mypy --strict`` on.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
CI_RUN = (ROOT / ".ci" / "run").read_text(encoding="utf-8")

_FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def blocks(language: str) -> list[str]:
    return [body for lang, body in _FENCE.findall(README) if lang == language]


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [body.strip() for lang, body in _FENCE.findall(section) if lang == "sh"]


def test_set_up_commands_use_a_virtual_environment() -> None:
    serve, tests = quick_start_commands()
    for command in (serve, tests):
        steps = command.split(" && ")
        assert steps[0] == "python3 -m venv .venv", command
        # Everything after runs from the environment, never the system's pip.
        assert all(step.startswith(".venv/bin/") for step in steps[1:]), command
    assert serve.endswith(" && .venv/bin/trio-tlsd serve")
    assert tests.endswith(" && .venv/bin/nox -s tests")


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    _, tests = quick_start_commands()
    assert tests in CI_RUN.splitlines()
    assert "\npip " not in CI_RUN and "python3 -m pip" not in CI_RUN


def test_python_snippets_are_the_type_checked_examples() -> None:
    snippets = blocks("python")
    files = [ROOT / "docs" / "examples" / f"readme_{n}.py" for n in ("server", "client")]
    assert snippets == [f.read_text(encoding="utf-8") for f in files]
    for snippet in snippets:
        ast.parse(snippet)  # a module: no top-level await
