"""The package's shape: extension points registered from outside, one settings source, one error base, no import cycles."""

import ast
import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import VALID, tiny_model

import llmsparse
from llmsparse.activation import ACTIVATION_METHODS, ActivationMethod, Site, sites_of
from llmsparse.activation import register as register_activation
from llmsparse.cli import main
from llmsparse.errors import CheckpointError, LlmsparseError, SettingsError, UnknownNameError
from llmsparse.formats import FORMATS, Format
from llmsparse.formats import register as register_format

PACKAGE = Path(llmsparse.__file__).parent


# --------------------------------------------------------------------------- a toy format and a toy activation method


class Coordinates(Format):
    """Non-zeros as flat int32 positions plus values: registered here, in the test file only."""

    name = "toy-coo"
    parts = ("shape", "positions", "values")
    note = "toy coordinate layout (positions and values)"

    @classmethod
    def from_config(cls, block):
        return cls() if block.get("format") == "toy-coo" else None

    def compress(self, weight, name):
        flat = weight.flatten()
        positions = flat.nonzero().squeeze(1)
        return {"shape": torch.tensor(list(weight.shape)), "positions": positions.to(torch.int32), "values": flat[positions]}

    def decompress(self, parts, name):
        if parts["positions"].numel() != parts["values"].numel():
            raise CheckpointError(f"{name}: {parts['positions'].numel()} positions for {parts['values'].numel()} values")
        shape = parts["shape"].tolist()
        flat = torch.zeros(shape[0] * shape[1], dtype=parts["values"].dtype)
        flat[parts["positions"].long()] = parts["values"]
        return flat.view(shape)

    def config_block(self):
        return {"format": "toy-coo", "sparsity_structure": "unstructured"}


@dataclass
class FixedConfig:
    threshold: float = field(default=0.5, metadata={"help": "every projection input below this magnitude is zeroed"})


class Fixed(ActivationMethod):
    """One fixed magnitude threshold for every projection, no calibration: registered here only."""

    name = "toy-fixed"
    Config = FixedConfig
    allocations = ("uniform",)

    def needs_calibration(self, allocation):
        return False

    def prepare(self, block, captured):
        return None

    def sites(self, block, prepared, sparsities):
        t = torch.tensor(self.config.threshold)
        return {block.names[role]: Site(role, s, threshold=t) for role, s in sparsities.items()}


@pytest.fixture
def toys():
    register_format(Coordinates)
    register_activation(Fixed)
    yield
    del FORMATS["toy-coo"], ACTIVATION_METHODS["toy-fixed"]


def test_a_format_registered_outside_the_package_round_trips_through_api_and_cli(toys, tokenizer, model_dir, tmp_path, calib_ids, capsys):
    model = tiny_model("llama")
    report = llmsparse.prune(model, method="magnitude", sparsity=0.6)
    out = llmsparse.save_pruned(model, tokenizer, tmp_path / "api", report=report, format="toy-coo")
    config = json.loads((out / "config.json").read_text())["quantization_config"]["sparsity_config"]
    assert config["format"] == "toy-coo" and report.storage["format"] == "toy-coo"
    assert "toy coordinate layout" in (out / "README.md").read_text()
    again, _ = llmsparse.load_model(out)
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key

    cli_out = tmp_path / "cli"
    args = ["-q", "prune", str(model_dir), "--method", "magnitude", "--sparsity", "0.5", "--format", "toy-coo", "--output", str(cli_out)]
    assert main(args) == 0
    assert json.loads((cli_out / "llmsparse.json").read_text())["format"] == "toy-coo"
    reloaded, _ = llmsparse.load_model(cli_out)
    w = reloaded.model.layers[0].mlp.down_proj.weight
    assert (w == 0).sum() == w.numel() // 2
    assert main(["methods"]) == 0
    assert "toy-coo" in capsys.readouterr().out


def test_an_activation_method_registered_outside_the_package_applies_through_api_and_cli(toys, model_dir, tmp_path, calib_ids, capsys):
    model = tiny_model("llama")
    report = llmsparse.sparsify_activations(model, None, method="toy-fixed", sparsity=0.3, method_options={"threshold": 0.2})
    assert report.method == "toy-fixed" and all(site.threshold == 0.2 for site in sites_of(model).values())

    out = tmp_path / "act"
    argv = ["-q", "sparsify", str(model_dir), "--method", "toy-fixed", "--sparsity", "0.3", "--toy-fixed-threshold", "0.25", "--output", str(out)]
    assert main(argv) == 0
    assert json.loads((out / "llmsparse.json").read_text())["recipe"]["method_options"] == {"threshold": 0.25}
    loaded, _ = llmsparse.load_model(out)
    sites = sites_of(loaded)
    assert len(sites) == 14 and all(float(site.threshold) == 0.25 for site in sites.values())
    assert main(["methods"]) == 0
    assert "toy-fixed" in capsys.readouterr().out
    # its option belongs to it only
    assert main(["sparsify", str(model_dir), "--sparsity", "0.3", "--toy-fixed-threshold", "0.1", "--calib", str(VALID)]) == 2
    assert "option of toy-fixed, not of teal" in capsys.readouterr().err


# --------------------------------------------------------------------------- one settings source


def test_api_defaults_recipe_keys_and_flags_come_from_the_settings_dataclasses(capsys):
    from llmsparse.checkpoint.recipe import RECIPE_KINDS
    from llmsparse.cli import build_parser

    for function, cls in ((llmsparse.prune, llmsparse.PruneSettings), (llmsparse.sparsify_activations, llmsparse.SparsifySettings)):
        params = inspect.signature(function).parameters
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert params[f.name].default == default, f.name
            assert f.metadata["help"], f.name
    assert RECIPE_KINDS["prune"].recipe_keys() == tuple(
        f.name for f in dataclasses.fields(llmsparse.PruneSettings) if f.metadata["recipe"]
    )
    assert "device" not in RECIPE_KINDS["prune"].recipe_keys() and "nsamples" in RECIPE_KINDS["prune"].recipe_keys()
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["prune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "calibration sequences (default 128)" in text and "tokens per calibration sequence (default 2048)" in text
    with pytest.raises(SystemExit):
        parser.parse_args(["sparsify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "calibration sequences (default 16)" in text and "--wina-mode" in text and "--sparsify-prefill" in text


def test_settings_are_type_checked_with_the_key_named():
    with pytest.raises(SettingsError, match="nsamples must be int"):
        llmsparse.PruneSettings(nsamples=4.7)
    with pytest.raises(SettingsError, match="sparsity must be float"):
        llmsparse.prune(tiny_model("llama"), None, "magnitude", "abc")
    assert llmsparse.PruneSettings(targets="q_proj").targets == ["q_proj"]  # one regex, not its characters


@pytest.mark.parametrize(
    "call, suggestion",
    [
        (lambda: llmsparse.get_method("wandaa"), "wanda"),
        (lambda: llmsparse.get_format("bitmsk"), "bitmask"),
        (lambda: llmsparse.activation.get_activation_method("teall"), "teal"),
        (lambda: llmsparse.PruneSettings(layer_budget="owll"), "owl"),
        (lambda: llmsparse.SparsifySettings(sparsity=0.5, prefill="al"), "all"),
        (lambda: llmsparse.get_method("sparsegpt", percdam=0.1), "percdamp"),
    ],
)
def test_unknown_names_get_one_error_type_with_close_matches(call, suggestion):
    with pytest.raises(UnknownNameError, match=f"did you mean {suggestion}"):
        call()


def test_every_error_the_cli_reports_is_one_line_and_exit_2(model_dir, capsys):
    assert issubclass(UnknownNameError, LlmsparseError) and issubclass(CheckpointError, LlmsparseError)
    for argv in (
        ["prune", str(model_dir), "--method", "wandaa", "--sparsity", "0.5"],
        ["prune", str(model_dir), "--sparsity", "0.5", "--nsamples", "many"],
        ["sparsify", str(model_dir), "--sparsity", "0.5", "--sparsify-prefill", "some"],
    ):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("llmsparse: error:") and err.count("\n") == 1, err


# --------------------------------------------------------------------------- package structure


def _imports(path: Path, module: str) -> set[str]:
    """Modules of the package that ``module`` imports anywhere in its file (lazy imports included)."""
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            root = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else [])) if node.level else node.module or ""
            found.update(f"{root}.{a.name}" for a in node.names)
            found.add(root)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {name for name in found if name.split(".")[0] == "llmsparse"}


def _graph() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["llmsparse", *path.relative_to(PACKAGE).with_suffix("").parts]
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for module, path in modules.items():
        targets = set()
        for name in _imports(path, module):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            # a module's own package (or an ancestor) is initialised before it: not an edge
            if name and name != module and not module.startswith(name + "."):
                targets.add(name)
        graph[module] = targets
    return graph


def test_no_import_cycles_lazy_imports_included():
    graph, state, cycles = _graph(), {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_the_ground_floor_imports_nothing_above_it():
    graph = _graph()
    assert graph["llmsparse.errors"] == set()
    assert graph["llmsparse.core.layout"] == {"llmsparse.errors"}
    assert graph["llmsparse.registry"] == {"llmsparse.errors"}
    assert graph["llmsparse.settings"] == {"llmsparse.errors"}


def test_no_file_in_the_package_over_350_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 350}
    assert not long, long
