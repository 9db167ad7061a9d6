"""The weighted triplet loss and its triplet sampling."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from jule_kit.plugins.loss.weighted_triplet import (
    WeightedTriplet,
    WeightedTripletCriterion,
    sample_triplets,
    weighted_triplet_loss,
)

# four unit vectors in the plane
F = [(1.0, 0.0), (0.0, 1.0), (0.6, 0.8), (-1.0, 0.0)]


def sqdist(i: int, j: int) -> float:
    return (F[i][0] - F[j][0]) ** 2 + (F[i][1] - F[j][1]) ** 2


def test_loss_hand_value():
    gamma, margin = 2.0, 0.2
    triplets = [(0, 1, 2), (1, 3, 2), (0, 2, 1)]
    # by hand: |f0-f1|² = 2, |f0-f2|² = 0.8, |f1-f3|² = 2, |f1-f2|² = 0.4
    #   (0,1,2): 2·2   − 0.8 + 0.2 = 3.4
    #   (1,3,2): 2·2   − 0.4 + 0.2 = 3.8
    #   (0,2,1): 2·0.8 − 2   + 0.2 = −0.2  → inactive under the hinge
    assert sqdist(0, 1) == pytest.approx(2.0)
    assert sqdist(0, 2) == pytest.approx(0.8)
    assert sqdist(1, 2) == pytest.approx(0.4)
    terms = [max(0.0, gamma * sqdist(a, p) - sqdist(a, n) + margin) for a, p, n in triplets]
    assert terms[2] == 0.0
    want = sum(terms) / len(terms)
    assert want == pytest.approx(7.2 / 3)

    f = torch.tensor(F, dtype=torch.float64)
    a, p, n = (torch.tensor(col) for col in zip(*triplets))
    got = weighted_triplet_loss(f, a, p, n, gamma, margin)
    assert got.ndim == 0
    assert got.item() == pytest.approx(want, rel=1e-12)


def test_loss_gamma_and_margin_enter_as_documented():
    f = torch.tensor(F, dtype=torch.float64)
    a, p, n = torch.tensor([0]), torch.tensor([2]), torch.tensor([1])
    # gamma 1, margin 1.5: 0.8 − 2 + 1.5 = 0.3
    assert weighted_triplet_loss(f, a, p, n, 1.0, 1.5).item() == pytest.approx(0.3)
    # gamma 3, margin 0: 2.4 − 2 = 0.4
    assert weighted_triplet_loss(f, a, p, n, 3.0, 0.0).item() == pytest.approx(0.4)
    # gamma 2, margin 0.2: inactive
    assert weighted_triplet_loss(f, a, p, n, 2.0, 0.2).item() == 0.0


def test_loss_gradient_hand_value():
    # one active triplet (0,1,2), gamma 2: dℓ/df_a = 2γ(f_a − f_p) − 2(f_a − f_n)
    f = torch.tensor(F, dtype=torch.float64, requires_grad=True)
    loss = weighted_triplet_loss(f, torch.tensor([0]), torch.tensor([1]), torch.tensor([2]), 2.0, 0.2)
    loss.backward()
    fa, fp, fn = (np.array(F[i]) for i in (0, 1, 2))
    np.testing.assert_allclose(f.grad[0].numpy(), 4 * (fa - fp) - 2 * (fa - fn))
    np.testing.assert_allclose(f.grad[1].numpy(), -4 * (fa - fp))
    np.testing.assert_allclose(f.grad[2].numpy(), 2 * (fa - fn))
    np.testing.assert_allclose(f.grad[3].numpy(), 0.0)


def test_gradcheck():
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(12, 5, generator=gen, dtype=torch.float64)
    f = f / f.norm(dim=1, keepdim=True)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4])
    a, p, n = sample_triplets(labels, 3, torch.Generator().manual_seed(1))
    gamma, margin = 2.0, 0.2
    fd = f.detach()
    hinge = gamma * (fd[a] - fd[p]).pow(2).sum(1) - (fd[a] - fd[n]).pow(2).sum(1) + margin
    keep = hinge.abs() > 1e-2  # away from the kink
    a, p, n = a[keep], p[keep], n[keep]
    assert (hinge[keep] > 0).any() and (hinge[keep] < 0).any()  # active and inactive triplets
    f.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: weighted_triplet_loss(x, a, p, n, gamma, margin), (f,))


# ----------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_neg", [1, 2, 4, 20])
def test_sample_triplets_properties(num_neg):
    labels = torch.tensor([3, 0, 3, 1, 1, 1, 2, 7, 0, 3, 5])
    a, p, n = sample_triplets(labels, num_neg, torch.Generator().manual_seed(0))
    assert a.dtype == p.dtype == n.dtype == torch.long
    assert a.shape == p.shape == n.shape
    lab = labels.tolist()
    n_clusters = len(set(lab))
    k = min(num_neg, n_clusters - 1)
    assert torch.all(labels[a] == labels[p])
    assert torch.all(a < p)
    assert torch.all(labels[n] != labels[a])
    pairs: dict[tuple[int, int], list[int]] = {}
    for ai, pi, ni in zip(a.tolist(), p.tolist(), n.tolist()):
        pairs.setdefault((ai, pi), []).append(ni)
    want_pairs = {(i, j) for i, j in itertools.combinations(range(len(lab)), 2) if lab[i] == lab[j]}
    assert set(pairs) == want_pairs
    for negs in pairs.values():
        assert len(negs) == k
        assert len(set(negs)) == k
    assert a.numel() == len(want_pairs) * k


def test_sample_triplets_is_reproducible_and_random():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    r1 = sample_triplets(labels, 2, torch.Generator().manual_seed(5))
    r2 = sample_triplets(labels, 2, torch.Generator().manual_seed(5))
    for x, y in zip(r1, r2):
        assert torch.equal(x, y)
    draws = {tuple(sample_triplets(labels, 2, torch.Generator().manual_seed(s))[2].tolist()) for s in range(10)}
    assert len(draws) > 1


def test_negatives_cover_every_other_sample():
    # with many draws, every other-cluster sample shows up as a negative of pair (0, 1)
    labels = torch.tensor([0, 0, 1, 2, 3, 4, 5])
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(50):
        a, p, n = sample_triplets(labels, 2, gen)
        seen |= set(n.tolist())
    assert seen == {2, 3, 4, 5, 6}


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [4, 4, 4, 4], [7]])
def test_no_triplet_gives_a_zero_loss_that_backpropagates(labels):
    labels = torch.tensor(labels)
    a, p, n = sample_triplets(labels, 5)
    assert a.numel() == p.numel() == n.numel() == 0
    assert a.dtype == torch.long
    f = torch.randn(len(labels), 3, requires_grad=True)
    loss = weighted_triplet_loss(f, a, p, n, 2.0, 0.2)
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert f.grad is not None
    assert torch.equal(f.grad, torch.zeros_like(f))


def test_criterion_end_to_end():
    loss = WeightedTriplet(gamma=2.0, margin=0.2, num_neg=3)
    crit = loss.criterion(160, np.array([0, 1, 2]), seed=0)
    assert isinstance(crit, WeightedTripletCriterion)
    f = torch.nn.functional.normalize(torch.randn(8, 160), dim=1).requires_grad_(True)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 2, 1])
    value = crit(f, y)
    a, p, n = sample_triplets(y, 3, torch.Generator().manual_seed(0))
    assert value.item() == pytest.approx(weighted_triplet_loss(f, a, p, n, 2.0, 0.2).item(), rel=1e-6)
    value.backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        WeightedTriplet(num_neg=0)


def test_epoch_order_is_a_permutation():
    order = WeightedTriplet().epoch_order(np.zeros(50, dtype=np.int64), torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(50))


def test_batches_without_a_pair_step_exactly_as_a_full_step(usps_subset, tmp_path, monkeypatch):
    """The engine skips the backward pass of batches with no same-cluster pair (their loss is 0 whatever
    the network computes); weights, momentum and batch-norm statistics must end bit for bit as when every
    batch runs forward and backward."""
    from pathlib import Path

    from jule_kit.engine import Experiment
    from jule_kit.recipe import load_recipe
    from jule_kit.rundir import RunDir

    recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "jule_usps.yaml",
                         [f"data={usps_subset}", "device=cpu", "train.epochs=2"])
    images = torch.as_tensor(np.load(usps_subset)["images"])
    # 30 pairs among 540 singletons, like a first period of many tiny clusters: some batches hold no pair
    labels = np.concatenate([np.arange(60) // 2, np.arange(30, 570)])
    skipped_steps = []
    step_without_signal = Experiment.step_without_signal
    monkeypatch.setattr(Experiment, "step_without_signal",
                        staticmethod(lambda *args: skipped_steps.append(1) or step_without_signal(*args)))

    def trained(skip: bool) -> dict:
        if not skip:
            monkeypatch.setattr(WeightedTriplet, "batch_has_signal", staticmethod(lambda batch_labels: True))
        experiment = Experiment(recipe, RunDir(tmp_path / str(skip)))
        torch.manual_seed(0)
        state = experiment.start(experiment.load_data(), resume=False)
        experiment.train_period(state.model, state.optimizer, images, labels, period=0, step=0)
        momentum = {f"momentum{i}": s["momentum_buffer"] for i, s in enumerate(state.optimizer.state.values())}
        return {**state.model.state_dict(), **momentum}

    skipped = trained(True)
    skips = len(skipped_steps)
    assert 0 < skips < 12  # 12 batches in all: some steps skipped, some full
    full = trained(False)
    assert len(skipped_steps) == skips  # every batch ran forward and backward
    assert skipped.keys() == full.keys()
    for key in full:
        assert torch.equal(skipped[key], full[key]), key
    assert not torch.equal(skipped["momentum0"], torch.zeros_like(skipped["momentum0"]))


def test_batch_has_signal_needs_two_samples_of_one_cluster():
    assert WeightedTriplet.batch_has_signal(torch.tensor([3, 1, 3]))
    assert not WeightedTriplet.batch_has_signal(torch.tensor([0, 1, 2, 5]))
