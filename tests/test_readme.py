"""README's two commands are the ones CI and users run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_readme_gives_exactly_two_commands():
    main_job, tests = _commands()
    assert main_job.endswith("jaxarch tour")
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command():
    _, tests = _commands()
    ci = (ROOT / ".ci" / "run").read_text()
    # CI adds -q to pip (quiet logs) but otherwise runs the README line verbatim.
    assert tests.replace("pip install -e", "pip install -q -e") in ci
