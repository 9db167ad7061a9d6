"""The paper's CNN backbone for each dataset's input shape."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from jule_kit.plugins.backbone.jule_cnn import JuleCNNBackbone

# name, input shape, blocks, pool, flattened size before the linear layer (paper's models_def)
PAPER_SHAPES = [
    ("mnist", (1, 28, 28), 2, [True, False], 3200),
    ("usps", (1, 16, 16), 1, None, 1800),
    ("coil20", (1, 128, 128), 4, None, 1250),
    ("cmu_pie", (1, 32, 32), 2, None, 1250),
    ("frgc", (3, 32, 32), 2, None, 1250),
]


def convs_and_linears(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("name,shape,blocks,pool,flat", PAPER_SHAPES, ids=[s[0] for s in PAPER_SHAPES])
def test_paper_shapes(name, shape, blocks, pool, flat):
    torch.manual_seed(0)
    model = JuleCNNBackbone(blocks=blocks, pool=pool).build(shape)
    assert model.fc.in_features == flat
    assert model.fc.out_features == 160
    assert model.embedding_dim == 160
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == blocks
    assert all(c.out_channels == 50 and c.kernel_size == (5, 5) and c.padding == (0, 0) for c in convs)
    assert convs[0].in_channels == shape[0]
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == sum(pool if pool is not None else [True] * blocks)
    assert all(p.ceil_mode for p in pools)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == blocks
    x = torch.rand(3, *shape)
    for mode in (model.train, model.eval):
        mode()
        with torch.no_grad():
            out = model(x)
        assert out.shape == (3, 160)
        torch.testing.assert_close(out.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)


def test_mnist_pool_only_after_first_block():
    model = JuleCNNBackbone(blocks=2, pool=[True, False]).build((1, 28, 28))
    kinds = [type(m).__name__ for m in model.features]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Conv2d", "BatchNorm2d", "ReLU"]


def test_coil100_rgb_64():
    model = JuleCNNBackbone(blocks=4).build((3, 64, 64))
    # 64 -conv-> 60 -pool-> 30 -> 26 -> 13 -> 9 -> 5 -> 1 -> 1 (ceil mode)
    assert model.fc.in_features == 50
    out = model(torch.rand(4, 3, 64, 64))
    assert out.shape == (4, 160)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)
    out.sum().backward()
    assert model.fc.weight.grad is not None


def test_umist_padding():
    model = JuleCNNBackbone(blocks=3, padding=2).build((1, 112, 92))
    assert model.fc.in_features == 8400  # 50 × 14 × 12 (paper)


@pytest.mark.parametrize("shape,blocks", [((1, 28, 28), 2), ((1, 32, 32), 2), ((1, 128, 128), 4)])
def test_initialisation(shape, blocks):
    torch.manual_seed(0)
    model = JuleCNNBackbone(blocks=blocks).build(shape)
    layers = convs_and_linears(model)
    assert len(layers) == blocks + 1
    for m in layers:
        w = m.weight.detach()
        assert torch.all(m.bias == 0)
        assert abs(w.mean().item()) < 0.001
        tol = 0.0015 if w.numel() >= 1000 else 0.003
        assert abs(w.std().item() - 0.01) < tol, (m, w.std().item())
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # pytorch default
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_init_std_and_torch7_batchnorm():
    torch.manual_seed(0)
    model = JuleCNNBackbone(blocks=2, init_std=0.05, bn_init="torch7").build((1, 32, 32))
    assert abs(model.fc.weight.std().item() - 0.05) < 0.002
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        assert torch.all((bn.weight >= 0) & (bn.weight <= 1))
        assert bn.weight.std() > 0.1  # uniform on [0, 1], not constant
        assert torch.all(bn.bias == 0)


@pytest.mark.parametrize("shape,blocks", [((1, 16, 16), 3), ((1, 16, 16), 4), ((1, 8, 8), 2), ((3, 4, 4), 1)])
def test_too_many_blocks_raises_value_error(shape, blocks):
    with pytest.raises(ValueError):
        JuleCNNBackbone(blocks=blocks).build(shape)


def test_invalid_settings():
    with pytest.raises(ValueError):
        JuleCNNBackbone(blocks=0)
    with pytest.raises(ValueError):
        JuleCNNBackbone(blocks=2, pool=[True])


def test_final_stage_refreshes_batch_norm_statistics_on_every_image(usps_subset, tmp_path):
    """The final network's own batch-norm statistics: the mean / variance of each BN input over all images."""
    import numpy as np

    from jule_kit.engine import Experiment
    from jule_kit.recipe import load_recipe
    from jule_kit.rundir import RunDir

    recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "jule_usps.yaml",
                         [f"data={usps_subset}", "train.feature_batch_size=100", "device=cpu"])
    experiment = Experiment(recipe, RunDir(tmp_path))
    images = torch.as_tensor(np.load(usps_subset)["images"][:300])
    torch.manual_seed(0)
    model = experiment.plugins.backbone.build(tuple(images.shape[1:]))
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    bn.running_mean.fill_(5.0)  # stale training-time averages
    seen = []
    hook = bn.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach().clone()))
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "batches" not in k}
    experiment.refresh_batch_norm(model, images)
    hook.remove()
    x = torch.cat(seen)  # the BN input for all 300 images, in 3 feature batches of 100
    assert len(seen) == 3 and len(x) == 300
    torch.testing.assert_close(bn.running_mean, x.mean((0, 2, 3)), rtol=1e-4, atol=1e-6)
    per_batch_var = torch.stack([b.var((0, 2, 3)) for b in seen]).mean(0)  # equal-weight average of the batches
    torch.testing.assert_close(bn.running_var, per_batch_var, rtol=1e-4, atol=1e-6)
    assert bn.momentum == 0.1  # restored
    for k, v in model.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k  # only the statistics change


def test_channels_last_trains_the_same_network_within_float_rounding(usps_subset, tmp_path):
    """train.channels_last: the same step (embeddings, loss, gradients) up to float rounding, repeatably."""
    import numpy as np

    from jule_kit.determinism import deterministic_algorithms
    from jule_kit.engine import Experiment
    from jule_kit.recipe import load_recipe
    from jule_kit.rundir import RunDir

    d = np.load(usps_subset)
    images, labels = torch.as_tensor(d["images"][:100]), torch.as_tensor(d["labels"][:100])

    def one_step(channels_last: bool):
        recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "jule_usps.yaml",
                             [f"data={usps_subset}", "device=cpu", f"train.channels_last={str(channels_last).lower()}"])
        experiment = Experiment(recipe, RunDir(tmp_path / str(channels_last)))
        torch.manual_seed(0)
        model = experiment.build_model(experiment.load_data())
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        layouts = []  # the conv's 50-channel output shows the memory format (1-channel input cannot)
        conv.register_forward_hook(lambda module, inputs, output: layouts.append(output.is_contiguous()))
        x = experiment.network_input(images)
        criterion = experiment.plugins.loss.criterion(model.embedding_dim, labels.numpy(), 0)
        with deterministic_algorithms(True, torch.device("cpu")):
            embeddings = model(x)
            loss = criterion(embeddings, labels)
            loss.backward()
        assert layouts == [not channels_last]
        return embeddings.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, last, again = one_step(False), one_step(True), one_step(True)
    torch.testing.assert_close(last[0], plain[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(last[1], plain[1], rtol=1e-4, atol=1e-5)
    # a conv bias before batch norm has a zero gradient up to rounding: compare on the gradients' scale
    scale = max(float(g.abs().max()) for g in plain[2].values())
    assert scale > 0
    for name in plain[2]:
        torch.testing.assert_close(last[2][name], plain[2][name], rtol=1e-3, atol=1e-4 * scale, msg=name)
        assert torch.equal(last[2][name], again[2][name]), name  # and bit for bit from one step to the next


def test_channels_last_auto_picks_the_layout_by_input_size(usps_subset, tmp_path):
    """train.channels_last=auto (the default): NCHW below 28x28 pixels, channels-last from there."""
    from jule_kit.engine import Experiment, uses_channels_last
    from jule_kit.recipe import load_recipe
    from jule_kit.rundir import RunDir

    sizes = [(16, 16), (27, 27), (28, 28), (32, 32), (112, 92)]
    assert [uses_channels_last("auto", (100, 1, h, w)) for h, w in sizes] == [False, False, True, True, True]
    assert uses_channels_last(True, (100, 1, 16, 16)) and not uses_channels_last(False, (100, 3, 64, 64))
    assert not uses_channels_last("auto", (100, 4096))  # flat features have no layout

    def conv_layout(size: int) -> bool:
        recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "jule_usps.yaml",
                             [f"data={usps_subset}", "device=cpu", f"data.resize=[{size}, {size}]"])
        assert recipe["train"]["channels_last"] == "auto"
        experiment = Experiment(recipe, RunDir(tmp_path / str(size)))
        data = experiment.load_data()
        model = experiment.build_model(data)
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        layouts = []  # the conv's 50-channel output shows the memory format (1-channel input cannot)
        conv.register_forward_hook(lambda module, inputs, output: layouts.append(not output.is_contiguous()))
        with torch.no_grad():
            model(experiment.network_input(torch.as_tensor(data.images[:2])))
        return layouts[0]

    assert [conv_layout(16), conv_layout(32)] == [False, True]


def test_eval_features_on_the_cpu_run_in_cached_batches_with_the_same_values(usps_subset, tmp_path):
    """Eval-mode extraction on the CPU takes at most CPU_EVAL_BATCH images at a time: each image's features
    are its own, so the values are those of one big batch; train-mode features keep the recipe's batch."""
    import numpy as np

    from jule_kit.engine import CPU_EVAL_BATCH, Experiment
    from jule_kit.recipe import load_recipe
    from jule_kit.rundir import RunDir

    images = torch.as_tensor(np.load(usps_subset)["images"][:600])

    def extract(mode: str) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "jule_usps.yaml",
                             [f"data={usps_subset}", "device=cpu", f"train.feature_mode={mode}"])
        experiment = Experiment(recipe, RunDir(tmp_path / mode))
        torch.manual_seed(0)
        model = experiment.plugins.backbone.build(tuple(images.shape[1:]))
        sizes = []
        model.register_forward_hook(lambda module, inputs, output: sizes.append(len(inputs[0])))
        features = experiment.extract(model, images)
        with torch.no_grad():
            model.train(mode == "train")
            whole = model(experiment.network_input(images))
        return features, whole, sizes[:-1]

    features, whole, sizes = extract("eval")
    assert sizes == [CPU_EVAL_BATCH, CPU_EVAL_BATCH, 600 - 2 * CPU_EVAL_BATCH]
    assert torch.equal(features, whole)
    _, _, sizes = extract("train")
    assert sizes == [600]  # batch statistics: the recipe's feature batch (1,000) holds all 600
