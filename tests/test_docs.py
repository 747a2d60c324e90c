"""The documentation cannot rot: its code runs, its commands parse, its site builds.

Every Python snippet included in a page (``--8<-- "docs/snippets/x.py"``) is executed and
asserts what the page says; every ``python``/``torchrun`` command in a page's bash blocks
is parsed by the argument parser of the script it runs; the API reference covers every
public name; the home page's picture and the benchmarks page match what their scripts
generate; ``mkdocs build --strict`` passes.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import re
import runpy
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import maskkit

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SNIPPETS = DOCS / "snippets"
PAGES = sorted(DOCS.rglob("*.md"))
INCLUDE = re.compile(r'^(?P<indent>[ \t]*)--8<-- "(?P<path>[^"]+)"[ \t]*$', re.MULTILINE)
# Scripts that are not page snippets run as they are: generators of docs content, and the
# torchrun example, which needs several processes.
GENERATORS = {"make_masks_figure.py", "make_benchmarks_page.py", "make_strategy_figures.py"}
DISTRIBUTED = {"distributed_refresh.py"}


def _load(path: Path) -> dict[str, Any]:
    """A script's globals, without running its ``__main__`` block."""
    return runpy.run_path(str(path), run_name=f"docs_{path.stem}")


def _expand(text: str) -> str:
    """A page's Markdown with its snippet includes replaced by the files' text."""
    return INCLUDE.sub(lambda m: (ROOT / m["path"]).read_text(), text)


def _included() -> set[Path]:
    return {
        (ROOT / m["path"]).resolve() for page in PAGES for m in INCLUDE.finditer(page.read_text())
    }


PAGE_SNIPPETS = sorted(
    path for path in SNIPPETS.glob("*.py") if path.name not in GENERATORS | DISTRIBUTED
)


def test_every_snippet_is_on_a_page_and_every_include_exists() -> None:
    included = _included()
    missing = sorted(str(path) for path in included if not path.is_file())
    assert not missing, f"pages include files that do not exist: {missing}"
    unused = sorted(
        path.name
        for path in SNIPPETS.iterdir()
        if path.suffix in (".py", ".sh")
        and path.name != "make_benchmarks_page.py"  # writes a page rather than being on one
        and path.resolve() not in included
    )
    assert not unused, f"snippets that no page includes: {unused}"


@pytest.mark.parametrize("path", PAGE_SNIPPETS, ids=lambda path: path.name)
def test_snippet_runs(path: Path) -> None:
    runpy.run_path(str(path), run_name="__main__")


@pytest.mark.slow
def test_distributed_snippet_under_torchrun() -> None:
    script = SNIPPETS / "distributed_refresh.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(script)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


# ---- commands in the pages' bash blocks ----------------------------------------------------

BASH_BLOCK = re.compile(r"^```bash\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)


def _page_commands() -> list[tuple[str, list[str]]]:
    """``(page, argv)`` of every python or torchrun command in a bash block of the pages."""
    commands = []
    for page in PAGES:
        for block in BASH_BLOCK.finditer(_expand(page.read_text())):
            body = block["body"].replace("\\\n", " ")
            for line in body.splitlines():
                argv = shlex.split(line, comments=True)
                if argv and argv[0] in ("python", "torchrun"):
                    commands.append((str(page.relative_to(DOCS)), argv))
    return commands


def _script_and_args(argv: list[str]) -> tuple[Path, list[str]]:
    position = next(i for i, arg in enumerate(argv) if arg.endswith(".py"))
    if argv[0] == "torchrun":
        assert all(arg.startswith("--") or arg.isdigit() for arg in argv[1:position]), argv
    return ROOT / argv[position], argv[position + 1 :]


@pytest.fixture
def scripts_importable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The recipes import their siblings (engine_*, models_msmae, msmae_util) as top-level modules
    # and benchmarks/run.py extends sys.path itself; monkeypatch restores sys.path, and the
    # scripts' own modules are dropped so that they cannot shadow other tests' imports.
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    yield
    folders = (ROOT / "examples", ROOT / "benchmarks")
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if origin and any(Path(origin).is_relative_to(folder) for folder in folders):
            del sys.modules[name]


def test_pages_show_commands() -> None:
    scripts = {_script_and_args(argv)[0].name for _, argv in _page_commands()}
    assert {"main_pretrain.py", "main_finetune.py"} <= scripts


@pytest.mark.usefixtures("scripts_importable")
@pytest.mark.parametrize(
    "page, argv", _page_commands(), ids=[f"{p}:{' '.join(a)[:60]}" for p, a in _page_commands()]
)
def test_page_command_parses(page: str, argv: list[str]) -> None:
    script, args = _script_and_args(argv)
    assert script.is_file(), f"{page} runs {script}, which does not exist"
    if script.parent == SNIPPETS:
        return  # a docs script, run by its own test
    namespace = _load(script)
    assert "get_args_parser" in namespace, f"{script} has no get_args_parser()"
    parser = argparse.ArgumentParser(parents=[namespace["get_args_parser"]()], add_help=False)
    try:
        parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"{page}: `{' '.join(argv)}` does not parse with {script.name}'s options")


# ---- the API reference ---------------------------------------------------------------------

AUTODOC = re.compile(r"^::: (?P<path>[\w.]+)$", re.MULTILINE)


def _resolve(path: str) -> Any:
    """The object a ``::: path`` entry renders: a module, or a name in its module."""
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError:
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)


def _documented() -> list[str]:
    return [
        m["path"]
        for page in (DOCS / "api").glob("*.md")
        for m in AUTODOC.finditer(page.read_text())
    ]


def _index_table(heading: str) -> str:
    """The Markdown of one section of docs/api/index.md."""
    text = (DOCS / "api" / "index.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1]
    return section.split("\n## ", 1)[0]


def test_top_level_api_and_its_docs_match_both_ways() -> None:
    # The index promises `from maskkit import <name>` for exactly these names (v0.1's docs
    # promised SplitCounts, which did not import).
    promised = set(re.findall(r"`(\w+)`", _index_table("Top level")))
    assert promised == set(maskkit.__all__), (
        f"index lists names maskkit does not export: {sorted(promised - set(maskkit.__all__))}; "
        f"exported but not listed: {sorted(set(maskkit.__all__) - promised)}"
    )
    for name in maskkit.__all__:
        assert hasattr(maskkit, name), f"maskkit.__all__ names {name}, which does not import"
    documented = {id(_resolve(path)) for path in _documented()}
    missing = sorted(
        name for name in maskkit.__all__ if id(getattr(maskkit, name)) not in documented
    )
    assert not missing, f"public names without an API entry in docs/api/: {missing}"


def test_every_listed_submodule_is_documented_in_full() -> None:
    modules = re.findall(r"^\| `(maskkit[\w.]*)` \|", _index_table("Submodules"), re.MULTILINE)
    assert modules, "the index lists no submodule"
    documented = set(_documented())
    for module_name in modules:
        module = importlib.import_module(module_name)
        own = [  # classes and functions defined here (not re-exports, aliases, constants)
            name
            for name in module.__all__
            if (inspect.isclass(obj := getattr(module, name)) or inspect.isfunction(obj))
            and obj.__module__ == module_name
        ]
        missing = [name for name in own if f"{module_name}.{name}" not in documented]
        assert not missing, f"{module_name} names without an API entry: {missing}"


def test_api_reference_names_the_defining_module() -> None:
    for path in _documented():
        obj = _resolve(path)
        if inspect.ismodule(obj):
            continue
        module = path.rpartition(".")[0]
        assert getattr(obj, "__module__", module) == module, f"{path} is defined elsewhere"


# ---- the griffe extension that renders Sphinx roles -----------------------------------------


def test_sphinx_roles_become_optional_autorefs() -> None:
    convert = _load(DOCS / "extensions" / "sphinx_roles.py")["convert_roles"]
    text = "See :class:`~maskkit.MaskSplit` and :meth:`MaskWeightBank.refresh`. Use::"
    resolve = {"maskkit.MaskSplit": "maskkit.split.MaskSplit"}.get
    out = convert(text, lambda name: resolve(name) or name)
    assert out == (
        'See <autoref identifier="maskkit.split.MaskSplit" optional><code>MaskSplit</code>'
        '</autoref> and <autoref identifier="MaskWeightBank.refresh" optional><code>'
        "MaskWeightBank.refresh</code></autoref>. Use:"
    )


# ---- generated content ---------------------------------------------------------------------


def test_masks_figure_matches_its_script_and_caption(tmp_path: Path) -> None:
    make_figure = _load(SNIPPETS / "make_masks_figure.py")["make_figure"]
    rates = make_figure(tmp_path / "masks.png")
    fresh = np.asarray(Image.open(tmp_path / "masks.png").convert("RGB"))
    committed = np.asarray(Image.open(DOCS / "assets" / "masks.png").convert("RGB"))
    assert fresh.shape == committed.shape
    # Same draws, same pixels; a tolerance for libraries that round colours differently.
    assert np.abs(fresh.astype(int) - committed.astype(int)).max() <= 2, (
        "docs/assets/masks.png is stale: run python docs/snippets/make_masks_figure.py"
    )
    # The caption: random masking leaves about a quarter of the lesion visible, SAM ~2%.
    assert 0.15 < rates["random_visible"] < 0.35
    assert rates["sam_visible"] < 0.05
    assert rates["sam_masked"] > rates["random_masked"]


@pytest.mark.slow
def test_strategy_figures_match_their_script(tmp_path: Path) -> None:
    make_figures = _load(SNIPPETS / "make_strategy_figures.py")["make_figures"]
    written = make_figures(tmp_path)
    committed = DOCS / "assets" / "strategies"
    assert sorted(p.name for p in written.values()) == sorted(p.name for p in committed.iterdir())
    for path in written.values():
        fresh = np.asarray(Image.open(path).convert("RGB")).astype(int)
        old = np.asarray(Image.open(committed / path.name).convert("RGB")).astype(int)
        assert fresh.shape == old.shape and np.abs(fresh - old).max() <= 2, (
            f"docs/assets/strategies/{path.name} is stale: run "
            "python docs/snippets/make_strategy_figures.py"
        )


# ---- the site ------------------------------------------------------------------------------


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    site = tmp_path / "site"
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    html = {path: path.read_text() for path in site.rglob("*.html")}
    assert not [str(p) for p, text in html.items() if ":class:`" in text or ":func:`" in text]
    masking = (site / "api" / "masking" / "index.html").read_text()
    assert 'id="maskkit.split.MaskSplit"' in masking
    assert (site / "assets" / "masks.png").is_file()
    assert not (site / "snippets").exists()  # included into pages, not published


def test_benchmarks_page_is_generated() -> None:
    namespace = _load(SNIPPETS / "make_benchmarks_page.py")
    results = namespace["load_results"](ROOT / "benchmarks" / "results")
    page = namespace["render_page"](results)
    assert (DOCS / "benchmarks.md").read_text() == page, (
        "docs/benchmarks.md is stale: run python docs/snippets/make_benchmarks_page.py"
    )
    for name, result in results:
        assert f"`{name}`" in page and result["device"] in page
    if results:
        cuda = any(namespace["is_cuda"](result) for _, result in results)
        assert ("No GPU run has been recorded yet" in page) == (not cuda)


def _bench_result(device: str, **summary: Any) -> dict[str, Any]:
    return {
        "device": device,
        "timing_method": "perf_counter" if device == "cpu" else "cuda_events",
        "quick": False,
        "sections": [],
        "versions": {
            "torch": "2.5.0",
            "timm": "1.0.9",
            "cuda": None if device == "cpu" else "12.4",
        },
        "summary": {
            "scope": "GPU goals",
            "goals": {
                key: {"goal": key, "target": "<= 1.1", "value": value, "met": value <= 1.1}
                for key, value in summary.items()
            },
        },
    }


def test_benchmarks_page_names_the_device_and_says_when_no_gpu_run_exists() -> None:
    render_page = _load(SNIPPETS / "make_benchmarks_page.py")["render_page"]
    assert "No benchmark results have been recorded yet" in render_page([])
    cpu = ("cpu.json", _bench_result("cpu", sam_vs_mae_floor=1.3))
    page = render_page([cpu])
    assert "No GPU run has been recorded yet" in page
    assert (
        "## cpu: `cpu.json`" in page and "| `sam_vs_mae_floor` | sam_vs_mae_floor | 1.300 |" in page
    )
    gpu = ("nvidia-h100.json", _bench_result("NVIDIA H100 80GB HBM3", sam_vs_mae_floor=1.02))
    page = render_page([gpu, cpu])
    assert "No GPU run has been recorded yet" not in page
    assert "GPU runs: NVIDIA H100 80GB HBM3" in page
    assert page.index("## NVIDIA H100 80GB HBM3") < page.index("## cpu")
