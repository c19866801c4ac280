"""The documentation site builds strictly (no broken link, anchor or API reference) and its API reference has an
entry for every public name. Needs the `docs` extra (`pip install -e ".[docs]"`); CI installs it and runs this
file after the suite (.ci/run)."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Module -> its API page under docs/api/. A module's public names are its `__all__`, or for a module without one
# the names it defines itself.
API_PAGES = {
    "jaxarch": "jaxarch", "jaxarch.layers": "layers", "jaxarch.models": "models", "jaxarch.data": "data",
    "jaxarch.train": "train", "jaxarch.config": "config", "jaxarch.registry": "registry",
}
# jaxarch's own names come from jaxarch.tuning; `__version__` is not documented.
PUBLIC_OVERRIDES = {"jaxarch": ["CpuTuning", "tune_cpu"]}
# `jaxarch.train.sweep` is the submodule for the docs' static analysis: the function is documented in it.
ANCHOR_OVERRIDES = {"jaxarch.train.sweep": "jaxarch.train.sweep.sweep"}


def public_names(module_name: str) -> list[str]:
    if module_name in PUBLIC_OVERRIDES:
        return PUBLIC_OVERRIDES[module_name]
    module = importlib.import_module(module_name)
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [name for name, value in vars(module).items()
            if not name.startswith("_") and getattr(value, "__module__", None) == module_name]


def test_every_api_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in [*API_PAGES.values(), "experiments"]:
        assert f"api/{page}.md" in nav, page
        assert (ROOT / "docs" / "api" / f"{page}.md").exists(), page


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed: "
                        "pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                           cwd=ROOT, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    return out


def test_front_page_is_the_readme_with_its_links_into_the_site(site):
    html = (site / "index.html").read_text()
    text = re.sub(r"<[^>]+>", "", html)  # code blocks are split into highlighted spans
    assert "Two commands" in text and "jaxarch tour" in text and "class Tagger(nn.Module)" in text
    assert 'href="docs/' not in html
    assert 'href="results/"' in html


def test_api_reference_has_every_public_name(site):
    missing = []
    for module_name, page in API_PAGES.items():
        html = (site / "api" / page / "index.html").read_text()
        anchors = set(re.findall(r'id="([\w.]+)"', html))
        for name in public_names(module_name):
            anchor = ANCHOR_OVERRIDES.get(f"{module_name}.{name}", f"{module_name}.{name}")
            if anchor not in anchors:
                missing.append(anchor)
    assert not missing, f"public names without an API entry: {missing}"


def test_guide_pages_are_built(site):
    for page in ["quickstart", "nnx", "layers", "configs", "sweeps", "scaling", "benchmarks", "reliability",
                 "claims", "report", "results", "experiments", "compatibility", "performance/cpu"]:
        assert (site / page / "index.html").exists(), page
