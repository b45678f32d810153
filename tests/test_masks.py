"""Patterns, target validation and the exact mask selectors, checked against brute force."""

import pytest
import torch

from llmsparse.core.masks import Pattern, SparsityError, check_width, lowest_n_of_m, lowest_overall, lowest_per_row, resolve_target


def test_pattern_parse():
    assert Pattern.parse("2:4") == Pattern(2, 4)
    assert Pattern.parse("4:8").sparsity == 0.5
    assert not Pattern.parse("unstructured").structured
    assert not Pattern.parse(None).structured
    assert str(Pattern.parse("2:4")) == "2:4"


@pytest.mark.parametrize("bad", ["4:4", "5:4", "0:4", "a:b", "2-4", "2:4:8"])
def test_pattern_rejects_impossible(bad):
    with pytest.raises(SparsityError):
        Pattern.parse(bad)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_sparsity_out_of_range(sparsity):
    with pytest.raises(SparsityError, match=r"\[0, 1\)"):
        resolve_target(sparsity, None)


def test_nm_fixes_sparsity():
    assert resolve_target(None, "2:4") == (0.5, Pattern(2, 4))
    assert resolve_target(0.5, "4:8") == (0.5, Pattern(4, 8))
    with pytest.raises(SparsityError, match="means sparsity"):
        resolve_target(0.7, "2:4")
    with pytest.raises(SparsityError):
        resolve_target(None, None)


def test_width_must_divide():
    check_width("x", 64, Pattern(2, 4))
    with pytest.raises(SparsityError, match="not divisible"):
        check_width("x", 66, Pattern(2, 4))


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_lowest_per_row_exact_with_ties(sparsity):
    scores = torch.randint(0, 3, (9, 20)).float()  # many ties
    mask = lowest_per_row(scores, sparsity)
    k = int(20 * sparsity)
    assert (mask.sum(1) == k).all()
    for row, m in zip(scores, mask):
        if 0 < k < 20:
            assert row[m].max() <= row[~m].min()


def test_lowest_overall_exact_and_global():
    scores = torch.randint(0, 5, (6, 10)).float()
    mask = lowest_overall(scores, 0.45)
    assert mask.sum() == int(60 * 0.45)
    assert scores[mask].max() <= scores[~mask].min()


def test_n_of_m_matches_brute_force():
    scores = torch.randn(5, 16)
    mask = lowest_n_of_m(scores, 2, 4)
    for r in range(5):
        for g in range(4):
            group = scores[r, 4 * g : 4 * g + 4]
            expected = set(torch.argsort(group)[:2].tolist())
            assert set(torch.nonzero(mask[r, 4 * g : 4 * g + 4]).flatten().tolist()) == expected


def test_pruned_counts_do_not_lose_a_weight_to_float_error():
    from llmsparse.core.masks import lowest_per_row, pruned_count

    assert 100 * 0.29 < 29 and pruned_count(100, 0.29) == 29
    assert pruned_count(64, 0.6) == 38  # a genuine fraction still rounds down
    assert lowest_per_row(torch.rand(3, 100), 0.29).sum(1).tolist() == [29] * 3
