"""The README's set-up commands are the ones CI runs: `.ci/run` holds the README's test command verbatim."""
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name: str) -> str:
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        return f.read()


def test_ci_runs_exactly_the_readme_test_command():
    commands = re.findall(r"^    (pip install .*'\.\[test\]'.*)$", _read("README.md"), flags=re.M)
    assert len(commands) == 1, commands
    ci = [line for line in _read(".ci/run").splitlines() if line and not line.startswith("#")]
    assert commands[0] in ci
