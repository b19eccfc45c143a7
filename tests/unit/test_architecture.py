"""The layering of src/ddpm: no import cycles, nothing imports the entry points, every model config instantiates."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import hydra
import pytest

from ddpm.config import compose_config
from ddpm.models import UNet
from tests.helpers.paths import ROOT

SRC = ROOT / "src"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, package: str) -> set[str]:
    """Every module an AST imports, at any depth (function-level imports count), relative imports resolved."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + [base]
                ).strip(".")
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import submodule`
    return found


def import_graph() -> dict[str, set[str]]:
    """ddpm module -> the ddpm modules it imports (a submodule's import of its own parent packages left out)."""
    files = {module_name(p): p for p in (SRC / "ddpm").rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = {m for m in imported_modules(ast.parse(path.read_text()), package) if m in files}
        graph[name] = {m for m in targets if m != name and not name.startswith(m + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_in_src():
    graph = import_graph()
    assert "ddpm.diffusion.samplers" in graph["ddpm.diffusion"]  # the graph sees package imports
    assert "ddpm.diffusion.process" in graph["ddpm.diffusion.samplers"]
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def code_outside_cli() -> dict[str, str]:
    """Python source of src/ddpm outside cli/, the benchmarks and the notebooks' code cells."""
    sources = {str(p): p.read_text() for p in (SRC / "ddpm").rglob("*.py") if "cli" not in p.parts}
    sources |= {str(p): p.read_text() for p in (ROOT / "benchmarks").glob("*.py")}
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        sources[str(nb)] = "\n".join(
            line for line in code.splitlines() if not line.lstrip().startswith(("%", "!"))
        )
    return sources


def test_only_the_root_scripts_import_the_entry_points():
    sources = code_outside_cli()
    assert any(path.endswith(".ipynb") for path in sources) and any("benchmarks" in path for path in sources)
    offenders = [
        path
        for path, text in sources.items()
        if any(
            m == "ddpm.cli" or m.startswith("ddpm.cli.") for m in imported_modules(ast.parse(text), "ddpm")
        )
    ]
    assert offenders == []


# each conf/model option with a data option whose images it fits
MODEL_DATA = {"unet_small": "mnist5k", "unet_ddpm_cifar10": "cifar10"}


def test_every_model_option_is_listed():
    assert {p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")} == set(MODEL_DATA)


@pytest.mark.parametrize("model,data", sorted(MODEL_DATA.items()))
def test_instantiate_builds_the_unet_of_every_model_option(model, data):
    cfg = compose_config(overrides=[f"model={model}", f"data={data}"])
    net = hydra.utils.instantiate(cfg.model)
    assert isinstance(net, UNet) and net.image_size == cfg.data.image_size


def test_the_process_takes_only_what_defines_it():
    """GaussianDiffusion is the paper (betas, objective, reverse variance, clipping, self-conditioned calls); how
    training draws t, weighs the loss and picks its target is the recipe's."""
    import inspect

    from ddpm.diffusion import GaussianDiffusion, Recipe

    settings = [p for p in inspect.signature(GaussianDiffusion.__init__).parameters if p != "self"]
    assert len(settings) <= 5, settings
    recipe = [p for p in inspect.signature(Recipe.__init__).parameters if p not in ("self", "diffusion")]
    assert not set(recipe) & set(settings)
    assert {"t_sampling", "loss_weight", "stf_reference"} <= set(recipe)


@pytest.mark.parametrize("objective", ["eps", "v"])
def test_an_objective_option_changes_the_objective_and_nothing_else(objective):
    """diffusion=eps|v against the default diffusion=x0, each with the default recipe: the composed configs differ in
    diffusion.objective only (before the recipe group, diffusion=v also dropped the CPU default's recipe)."""
    from omegaconf import OmegaConf

    def flat(cfg, prefix=""):
        out = {}
        for k, v in cfg.items():
            out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
        return out

    base = flat(OmegaConf.to_container(compose_config(), resolve=False))
    other = flat(OmegaConf.to_container(compose_config(overrides=[f"diffusion={objective}"]), resolve=False))
    differ = {k for k in set(base) | set(other) if base.get(k) != other.get(k)}
    assert differ == {"diffusion.objective"}
    assert (base["diffusion.objective"], other["diffusion.objective"]) == ("x0", objective)
