"""Saving activation sparsity with a model and restoring it on load.

The sites go to ``activation_sparsity.safetensors`` (thresholds and WINA column norms as tensors,
each site's role, target and top-k in the file's metadata) and ``config.json`` gets an
``llmsparse_activation`` block naming the file and the settings. Plain ``transformers`` ignores
both and loads the dense model; :func:`llmsparse.load_model` re-attaches the sites.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError
from .hooks import Site, attach, settings_of, sites_of
from .sites import find_blocks

STATE_FILE = "activation_sparsity.safetensors"
CONFIG_KEY = "llmsparse_activation"
FORMAT_VERSION = 1


def save_activation_state(model: nn.Module, directory: str | Path) -> bool:
    """Write the attached sites next to a saved model; False (nothing written) for a dense model."""
    sites = sites_of(model)
    if not sites:
        return False
    directory = Path(directory)
    tensors, meta = {}, {}
    for name, site in sites.items():
        meta[name] = {"role": site.role, "sparsity": site.sparsity, "k": site.k}
        if site.threshold is not None:
            tensors[f"{name}.threshold"] = site.threshold.detach().float().cpu().clone()  # own storage: sites may share one tensor
        if site.scale is not None:
            tensors[f"{name}.scale"] = site.scale.detach().float().cpu().clone()  # own storage: sites may share one tensor
    save_file(tensors, directory / STATE_FILE, metadata={"sites": json.dumps(meta), "version": str(FORMAT_VERSION)})
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config[CONFIG_KEY] = dict(settings_of(model) or {}, file=STATE_FILE, version=FORMAT_VERSION)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return True


def site_widths(model: nn.Module) -> dict[str, int]:
    """Channels of every module that can carry a site: Linear inputs, and MLP activation outputs."""
    widths = {}
    for block in find_blocks(model):
        widths.update({block.names[role]: m.in_features for role, m in block.linears.items()})
        if block.act_name and "up" in block.linears:
            widths[block.act_name] = block.linears["up"].out_features
    return widths


def _check_site(name: str, site: Site, widths: dict[str, int], where: Path) -> None:
    if name not in widths:
        raise CheckpointError(
            f"{where}: activation site {name!r} is not a projection of this model; the threshold file does not match the model"
        )
    channels = widths[name]
    for label, tensor in (("threshold", site.threshold), ("scale", site.scale)):
        if tensor is not None and tensor.dim() > 0 and tensor.numel() != channels:
            raise CheckpointError(
                f"{where}: {name}.{label} has {tensor.numel()} channels, the model's module has {channels}; the threshold file does not match the model"
            )
    if site.k is not None and not 0 < site.k <= channels:
        raise CheckpointError(f"{where}: {name} keeps k={site.k} of {channels} channels; the threshold file does not match the model")


def load_activation_state(model: nn.Module, directory: str | Path, block: dict) -> None:
    """Attach the sites saved in ``directory`` (described by the config block ``block``) to ``model``."""
    directory = Path(directory)
    path = directory / block.get("file", STATE_FILE)
    if block.get("version", FORMAT_VERSION) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: activation sparsity format version {block['version']} is newer than this llmsparse reads ({FORMAT_VERSION})"
        )
    if not path.is_file():
        raise CheckpointError(f"{directory}: config.json declares activation sparsity but {path.name} is missing")
    try:
        tensors = load_file(path)
        with safe_open(path, "pt") as f:
            meta = json.loads((f.metadata() or {})["sites"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable activation sparsity file: {err}") from err
    sites, widths = {}, site_widths(model)
    for name, info in meta.items():
        try:
            site = Site(
                str(info["role"]),
                float(info["sparsity"]),
                tensors.pop(f"{name}.threshold", None),
                tensors.pop(f"{name}.scale", None),
                info.get("k"),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: malformed entry for site {name!r}: {err}") from err
        if site.threshold is None and site.k is None:
            raise CheckpointError(f"{path}: site {name!r} has neither a threshold nor k")
        _check_site(name, site, widths, path)
        sites[name] = site
    if tensors:
        raise CheckpointError(f"{path}: tensors without a site: {', '.join(sorted(tensors))[:200]}")
    settings = {k: v for k, v in block.items() if k not in ("file", "version")}
    attach(model, sites, settings)


def restore_activation_state(model: nn.Module, directory: str | Path) -> bool:
    """Re-attach saved activation sparsity when the model's config declares it; True if it did."""
    block = getattr(model.config, CONFIG_KEY, None)
    if not block:
        return False
    delattr(model.config, CONFIG_KEY)  # the block describes the file, not the model: re-saving writes it afresh
    load_activation_state(model, directory, dict(block))
    return True
