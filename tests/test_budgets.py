"""Layer budgets: OWL's formula, its outlier ratios against an independent dense forward, and its use with every method."""

import pytest
import torch
from conftest import tiny_model

import llmsparse
from llmsparse.core.layout import find_layers, get_weight, matrix_modules
from llmsparse.core.masks import SparsityError
from llmsparse.errors import UnknownNameError
from llmsparse.pruning.budgets import outlier_ratio, owl_sparsities


def test_outlier_ratio_brute_force():
    a, b = torch.rand(4, 5), torch.rand(3, 7) * 10
    values = torch.cat([a.flatten(), b.flatten()]).tolist()
    mean = sum(values) / len(values)
    expected = 100 * sum(v > 1.5 * mean for v in values) / len(values)
    assert outlier_ratio([a, b], 1.5) == pytest.approx(expected)


def test_owl_sparsities_average_to_the_target_within_the_lambda_band():
    ratios = [3.0, 1.0, 7.0, 2.5, 4.0]
    budgets = owl_sparsities(ratios, 0.7, 0.08)
    assert sum(budgets) / len(budgets) == pytest.approx(0.7)
    assert max(budgets) - min(budgets) == pytest.approx(0.16)
    assert all(0 <= s < 1 for s in budgets)
    order = sorted(range(5), key=lambda i: ratios[i])  # more outliers -> lower sparsity
    assert [budgets[i] for i in order] == sorted(budgets, reverse=True)
    # the paper's formula written out: s_l = 1 - (D_l - mean(D) + 1 - s), D rescaled to [0, 2 lambda]
    D = [(r - 1.0) / 6.0 * 0.16 for r in ratios]
    assert budgets == pytest.approx([1 - (d - sum(D) / 5 + 1 - 0.7) for d in D])


def test_owl_sparsities_edge_cases():
    assert owl_sparsities([2.0, 2.0, 2.0], 0.5, 0.08) == pytest.approx([0.5] * 3)
    weighted = owl_sparsities([1.0, 2.0], 0.5, 0.1, sizes=[3, 1])
    assert (3 * weighted[0] + weighted[1]) / 4 == pytest.approx(0.5)
    with pytest.raises(SparsityError, match="layer 3 at sparsity 1.03"):
        owl_sparsities([1.0, 9.0], 0.95, 0.08, layers=[3, 7])


def dense_outlier_ratios(model, ids, m):
    """OWL's ratios from one plain forward of the dense model with hooks (no llmsparse engine)."""
    layout = find_layers(model)
    norm2 = {}

    def hook_for(module):
        def hook(mod, inputs):
            x = inputs[0].double()
            norm2[module] = norm2.get(module, 0) + x.pow(2).sum(dim=(0, 1))

        return hook

    modules = {i: matrix_modules(layer, "") for i, layer in enumerate(layout.layers)}
    handles = [mod.register_forward_pre_hook(hook_for(mod)) for ms in modules.values() for mod in ms.values()]
    with torch.no_grad():
        for row in ids:
            model(row.unsqueeze(0))
    for h in handles:
        h.remove()
    ratios = []
    for ms in modules.values():
        scores = [get_weight(mod).double().abs() * (norm2[mod] / len(ids)).sqrt() for mod in ms.values()]
        ratios.append(outlier_ratio(scores, m))
    return ratios


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "dsnot"])
def test_owl_with_every_method_hits_the_global_target(method, calib_ids):
    model = tiny_model("gemma3")
    expected_ratios = dense_outlier_ratios(model, calib_ids, 2.0)
    report = llmsparse.prune(model, method=method, sparsity=0.6, calib=calib_ids, device="cpu", layer_budget="owl", owl_m=2.0, owl_lambda=0.1)
    budget = report.layer_budget
    assert budget["budget"] == "owl" and budget["m"] == 2.0 and budget["lambda"] == 0.1
    assert [budget["outlier_ratio"][i] for i in range(3)] == pytest.approx(expected_ratios, abs=1e-6)
    targets = [budget["sparsity"][i] for i in range(3)]
    assert sum(targets) / 3 == pytest.approx(0.6)
    assert max(targets) - min(targets) == pytest.approx(0.2)
    for m in report.matrices:  # each matrix pruned to its layer's budget (up to int() rounding of a 64/128-wide row)
        assert m.target == targets[m.layer]
        assert 0 <= m.target - m.sparsity < 1 / 64, m.name
    assert abs(report.global_sparsity - 0.6) < 1 / 64
    assert "layer budget owl" in report.table()


def test_owl_refusals_change_nothing(calib_ids):
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SparsityError, match="outside"):
        llmsparse.prune(model, method="wanda", sparsity=0.95, calib=calib_ids, device="cpu", layer_budget="owl", owl_lambda=0.1)
    with pytest.raises(SparsityError, match="unstructured"):
        llmsparse.prune(model, method="wanda", pattern="2:4", calib=calib_ids, device="cpu", layer_budget="owl")
    with pytest.raises(UnknownNameError, match="unknown layer budget"):
        llmsparse.prune(model, method="wanda", sparsity=0.5, calib=calib_ids, device="cpu", layer_budget="owls")
    with pytest.raises(llmsparse.CalibrationDataError, match="OWL"):
        llmsparse.prune(model, method="magnitude", sparsity=0.5, device="cpu", layer_budget="owl")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_explicit_layer_sparsities(calib_ids):
    model = tiny_model("llama")
    report = llmsparse.prune(model, method="wanda", sparsity=0.5, calib=calib_ids, device="cpu", layer_budget=[0.25, 0.75])
    assert report.layer_sparsity() == pytest.approx({0: 0.25, 1: 0.75})
    with pytest.raises(SparsityError, match="3 layer sparsities given for 2"):
        llmsparse.prune(tiny_model("llama"), method="wanda", sparsity=0.5, calib=calib_ids, layer_budget=[0.5] * 3)
