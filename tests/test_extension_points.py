"""Extension points registered from outside the package, one settings source for API, recipes and flags, one error base."""

import dataclasses
import inspect
import json
from dataclasses import dataclass, field

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
    from llmsparse.checkpoint.jobs import PruneJob, StreamSettings
    from llmsparse.checkpoint.load import LoadSettings
    from llmsparse.checkpoint.recipe import RECIPE_KINDS
    from llmsparse.cli import build_parser
    from llmsparse.settings import signature_drift, signature_source

    entry_points = (
        (llmsparse.prune, llmsparse.PruneSettings),
        (llmsparse.sparsify_activations, llmsparse.SparsifySettings),
        (llmsparse.prune_checkpoint, StreamSettings),
        (llmsparse.load_model, LoadSettings),
        (llmsparse.prune_structured, llmsparse.structured.StructuredSettings),
        (llmsparse.recover, llmsparse.RecoverSettings),
    )
    for function, cls in entry_points:
        # the parameters IDEs see end with the settings' fields: names, order, defaults and annotations
        assert function.settings_class is cls
        assert signature_drift(function, cls) == [], f"{function.__name__}: paste these parameters:\n{signature_source(cls)}"
        for f in dataclasses.fields(cls):
            assert f.metadata["help"], f.name
    # a setting an entry point would refuse is not among its parameters
    params = inspect.signature(llmsparse.prune).parameters
    assert "stream" not in params and "resume" not in params and "resume" in inspect.signature(llmsparse.prune_checkpoint).parameters
    assert RECIPE_KINDS["prune"] is PruneJob
    assert RECIPE_KINDS["prune"].recipe_keys() == tuple(f.name for f in dataclasses.fields(llmsparse.PruneSettings) if f.metadata["recipe"]) + ("stream", "recover")
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
        llmsparse.prune(tiny_model("llama"), None, method="magnitude", sparsity="abc")
    with pytest.raises(SettingsError, match="positional"):
        llmsparse.prune(tiny_model("llama"), None, "magnitude", 0.5, "2:4")  # options after method and sparsity are keyword-only
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




def test_method_options_are_settings_fields_with_help_and_range_checks():
    from llmsparse.activation import ACTIVATION_METHODS
    from llmsparse.methods import METHODS
    from llmsparse.registry import config_fields
    from llmsparse.settings import Settings
    from llmsparse.structured import STRUCTURED

    for registry in (METHODS, ACTIVATION_METHODS, STRUCTURED):
        for name, cls in registry.items():
            assert issubclass(cls.Config, Settings), name
            for f in config_fields(cls):
                assert f.metadata["help"], (name, f.name)
    with pytest.raises(SettingsError, match="sparsegpt option blocksize must be at least 1, got -5"):
        llmsparse.get_method("sparsegpt", blocksize=-5)
    with pytest.raises(SettingsError, match="ria option a must be a finite number"):
        llmsparse.get_method("ria", a=float("nan"))
