"""The recipe key ``deterministic``: PyTorch's deterministic kernels while a run computes."""
from __future__ import annotations

import hashlib

import torch

from jule_kit.determinism import deterministic_algorithms
from jule_kit.plugins.loss.weighted_triplet import sample_triplets, weighted_triplet_loss
from jule_kit.recipe import load_recipe


def triplet_gradient_digests(calls: int) -> set[str]:
    """The gradient of the triplet loss on one batch, computed ``calls`` times (the run-to-run source)."""
    torch.manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(100, 160), dim=1).requires_grad_()
    labels = torch.randint(0, 4, (100,))  # few clusters: many pairs, every row indexed hundreds of times
    a, p, n = sample_triplets(labels, 20, torch.Generator().manual_seed(0))
    digests = set()
    for _ in range(calls):
        f.grad = None
        weighted_triplet_loss(f, a, p, n, 2.0, 0.2).backward()
        digests.add(hashlib.sha256(f.grad.numpy().tobytes()).hexdigest())
    return digests


def test_triplet_gradient_is_repeatable_under_the_setting():
    with deterministic_algorithms(True, torch.device("cpu")):
        assert len(triplet_gradient_digests(20)) == 1


def test_the_setting_is_restored_after_the_run():
    before = torch.are_deterministic_algorithms_enabled()
    fill_before = torch.utils.deterministic.fill_uninitialized_memory
    with deterministic_algorithms(True, torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.utils.deterministic.fill_uninitialized_memory is False  # NaN-filling costs time, changes nothing
    assert torch.are_deterministic_algorithms_enabled() == before
    assert torch.utils.deterministic.fill_uninitialized_memory == fill_before
    with deterministic_algorithms(False, torch.device("cpu")):
        assert not torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before


def test_recipes_are_deterministic_unless_they_say_otherwise():
    assert load_recipe("recipes/quickstart_digits.yaml")["deterministic"] is True
    assert load_recipe("recipes/quickstart_digits.yaml", ["deterministic=false"])["deterministic"] is False
