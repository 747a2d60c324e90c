"""The docs render offline: no script, stylesheet or font comes from a CDN (issue 15).

MathJax is vendored under docs/assets/vendor/mathjax/ (SVG output, no web fonts) and Material's
Google Fonts are switched off. These checks read mkdocs.yml only; they need no mkdocs install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


class _Loader(yaml.SafeLoader):
    """A safe loader that tolerates mkdocs' ``!!python/name:`` and ``!ENV`` tags."""


_Loader.add_multi_constructor("", lambda loader, suffix, node: None)


def _config() -> dict[str, Any]:
    return yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_Loader)


def _assets(config: dict[str, Any], key: str) -> list[str]:
    """extra_javascript/extra_css entries as paths (an entry may be a mapping with ``path``)."""
    return [entry["path"] if isinstance(entry, dict) else entry for entry in config.get(key, [])]


def test_extra_assets_are_local_files() -> None:
    config = _config()
    for key in ("extra_javascript", "extra_css"):
        for path in _assets(config, key):
            assert "://" not in path and not path.startswith("//"), f"{key}: {path} is remote"
            assert (DOCS / path).is_file(), f"{key}: docs/{path} does not exist"


def test_mathjax_is_vendored_with_its_licence() -> None:
    scripts = _assets(_config(), "extra_javascript")
    vendored = [path for path in scripts if path.startswith("assets/vendor/mathjax/")]
    assert vendored, scripts
    # The configuration must run before the library reads window.MathJax.
    assert scripts.index("assets/mathjax.js") < scripts.index(vendored[0])
    folder = DOCS / "assets" / "vendor" / "mathjax"
    assert "Apache License" in (folder / "LICENSE").read_text()
    assert "3.2.2" in (folder / "README.txt").read_text()


def test_theme_loads_no_web_fonts() -> None:
    assert _config()["theme"]["font"] is False


def test_nav_and_repo_url() -> None:
    config = _config()
    assert config["repo_url"] == "https://github.com/maskkit/maskkit"
    (api,) = [entry["API reference"] for entry in config["nav"] if "API reference" in entry]
    # Every page under "API reference" has its own title (no "API reference › API reference").
    assert all(isinstance(entry, dict) for entry in api), api
