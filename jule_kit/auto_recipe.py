"""JULE settings derived from the data (recipe key ``derive: true``, the shipped ``jule`` recipe).

The paper (Yang, Parikh & Batra, CVPR 2016) keeps every hyper-parameter fixed across its datasets
but two: the CNN, chosen by the input size, and the unrolling rate η. These rules make both choices
(and the loss weight that goes with η) from what any image collection has — N images of C×H×W
pixels and K clusters — and nothing else:

=====================  ============  ==========================  ===============================
smaller image side s   input         CNN blocks                  the paper's net at that size
=====================  ============  ==========================  ===============================
5–15                   s×s (kept)    1                           USPS's (one block)
16–27                  16×16         1                           USPS 16×16
28–31                  28×28         2, pooling after the first  MNIST 28×28
32–63                  32×32         2                           CMU-PIE, FRGC 32×32
64–127                 64×64         3                           COIL-100 (jule_coil100, 64×64)
128 and more           128×128       4                           COIL-20, COIL-100 128×128
=====================  ============  ==========================  ===============================

Images are only shrunk, never enlarged (a folder of several sizes takes its median size), and
resized to a square when not square already. Channels stay what the data has: grey stays one
channel, colour stays RGB, and a folder of grey and colour images together is read as RGB.

η = 0.9 when N/K ≥ 60, else 0.2. With n0 ≈ N/6 initial clusters, η = 0.9 reaches K in
⌈log(n0/K) / log 10⌉ merge periods, which is at least two only while N/K > 60: the paper's η = 0.9
sets (COIL-20/100 at N/K = 72, USPS 1100, MNIST 1000–7000) get 2–4 periods, while UMist (29) and
CMU-PIE (42) would be merged to K in a single period, so the paper's 0.2 gives them 8–9.

The triplet loss's positive weight γ goes with η: 1 (the authors' code) at η = 0.9, the paper's 2 at
η = 0.2, as the shipped recipes set it (``_jule.yaml``; docs/RESULTS.md measures both on every dataset).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from .data import DataSummary, summarize_dataset
from .errors import DataError, RecipeError


@dataclass(frozen=True)
class Net:
    """The paper's CNN for inputs of ``side``×``side`` pixels."""

    side: int
    blocks: int
    pool: list[bool] | None  # None: a pooling layer after every block
    paper: str  # the paper's datasets this net is for


# largest first: an image takes the largest input that its smaller side covers
NETS = (
    Net(128, 4, None, "COIL-20/COIL-100 at 128x128"),
    # 3 blocks on 64x64 end on the 5x5x50 map the paper's 4 blocks reach on 128x128 (4 would end on 1x1)
    Net(64, 3, None, "COIL-100 at 64x64 (jule_coil100)"),
    Net(32, 2, None, "CMU-PIE and FRGC at 32x32"),
    Net(28, 2, [True, False], "MNIST at 28x28"),
    Net(16, 1, None, "USPS at 16x16"),
)
SMALLEST_SIDE = 5  # the first 5x5 convolution needs at least this many pixels
FEW_PER_CLUSTER = 60  # N/K below this: η = 0.9 would leave a single merge period
ETA_MANY, ETA_FEW = 0.9, 0.2  # the paper's digit/object and face settings
GAMMA_MANY, GAMMA_FEW = 1.0, 2.0  # the loss's positive weight with each: the authors' code's, the paper's
IMAGES_PER_INITIAL_CLUSTER = 6  # the nearest-neighbour chains start from about N/6 clusters


@dataclass(frozen=True)
class Derived:
    """One recipe key set from the data, and the rule that set it."""

    key: str  # dotted, as --set writes it: "backbone.blocks"
    value: Any
    rule: str


def net_for(height: int, width: int) -> Net:
    """The input size and CNN for images of ``height``×``width`` pixels (the table above)."""
    side = min(height, width)
    for net in NETS:
        if side >= net.side:
            return net
    if side < SMALLEST_SIDE:
        raise DataError(f"images of {height}x{width} pixels are too small for the CNN's 5x5 convolutions; "
                        f"they need at least {SMALLEST_SIDE}x{SMALLEST_SIDE}")
    return Net(side, 1, None, "USPS's one block, at the images' own size")


def merge_periods(n_images: int, n_clusters: int, eta: float) -> int:
    """About how many periods the joint loop merges for: ⌈log(n0/K) / log(1/(1-η))⌉ with n0 = N/6."""
    initial = n_images / IMAGES_PER_INITIAL_CLUSTER
    if initial <= n_clusters:
        return 1
    return max(1, math.ceil(math.log(initial / n_clusters) / math.log(1.0 / (1.0 - eta))))


def gamma_for(eta: float) -> float:
    """The triplet loss's positive weight that goes with unrolling rate ``eta``: the paper's 2 with its face
    setting (and any rate nearer it), the authors' code's 1 with the digit/object setting."""
    return GAMMA_FEW if eta < (ETA_FEW + ETA_MANY) / 2 else GAMMA_MANY


def derive_rules(n_images: int, image_shape: tuple[int, int, int], n_clusters: int, *,
                 mixed_sizes: bool = False, mixed_modes: bool = False, eta: float | None = None) -> list[Derived]:
    """Each derived key with its rule, for N images of (C, H, W) pixels and K clusters.

    ``mixed_sizes``: the images differ in size (a resize is needed even to the median size);
    ``mixed_modes``: grey and colour images together (read as RGB); ``eta``: the unrolling rate the
    user chose, which the loss's weight then follows (None: the rule's).
    """
    c, h, w = image_shape
    if c not in (1, 3):
        raise ValueError(f"image_shape: expected 1 or 3 channels, got {image_shape}")
    if not 2 <= n_clusters <= n_images:
        raise ValueError(f"n_clusters: expected 2..{n_images}, got {n_clusters}")
    net = net_for(h, w)
    out = []
    if mixed_sizes or (h, w) != (net.side, net.side):
        why = "images of several sizes" if mixed_sizes else f"{h}x{w} images"
        out.append(Derived("data.resize", [net.side, net.side],
                           f"{why} resized to the CNN input {net.side}x{net.side}"))
    out.append(Derived("data.channels", c, "grey and colour images together: all read as RGB" if mixed_modes
                       else "colour images stay RGB" if c == 3 else "grey images stay grey"))
    net_rule = f"{net.side}x{net.side} input: the paper's net for {net.paper}"
    out.append(Derived("backbone.blocks", net.blocks, net_rule))
    out.append(Derived("backbone.pool", net.pool, f"{net_rule}, " + ("pooling after every block" if net.pool is None
                                                                     else "pooling after the first block only")))
    per_cluster = n_images / n_clusters
    rule_eta = ETA_MANY if per_cluster >= FEW_PER_CLUSTER else ETA_FEW
    why = (f">= {FEW_PER_CLUSTER}: the paper's digit/object setting" if rule_eta == ETA_MANY else
           f"< {FEW_PER_CLUSTER}: the paper's face setting ({ETA_MANY} would merge to K in one period)")
    periods = merge_periods(n_images, n_clusters, rule_eta)
    out.append(Derived("clusterer.eta", rule_eta, f"N/K = {per_cluster:.0f} {why}; about {periods} merge "
                       f"period{'s' if periods > 1 else ''}"))
    eta = rule_eta if eta is None else eta
    gamma = gamma_for(eta)
    out.append(Derived("loss.gamma", gamma, f"eta {eta}: " + ("the authors' code's positive weight" if
                       gamma == GAMMA_MANY else "the paper's positive weight, as with its face setting")))
    out.append(Derived("clusters", n_clusters, "as given (--clusters or the recipe)"))
    return out


def nest(settings: Iterable[Derived]) -> dict:
    """Dotted keys to the nested mapping a recipe writes: {"backbone": {"blocks": 1}, ...}."""
    out: dict = {}
    for s in settings:
        *parents, last = s.key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = s.value
    return out


def derive_settings(n_images: int, image_shape: tuple[int, int, int], n_clusters: int, *,
                    mixed_sizes: bool = False, mixed_modes: bool = False) -> dict:
    """The recipe overrides the rules give for N images of (C, H, W) pixels and K clusters."""
    return nest(derive_rules(n_images, image_shape, n_clusters, mixed_sizes=mixed_sizes, mixed_modes=mixed_modes))


@dataclass(frozen=True)
class Derivation:
    """What ``derive_from_data`` found and set."""

    data: DataSummary
    settings: list[Derived]

    @property
    def description(self) -> str:
        """One line for the resolved recipe: where its derived settings came from."""
        values = {s.key: s.value for s in self.settings}
        c, h, w = self.data.shape
        side = values.get("data.resize", [h, w])
        channels = values.get("data.channels", c)
        parts = [f"{side[0]}x{side[1]} {'RGB' if channels == 3 else 'grey'} input"]
        if "backbone.blocks" in values:
            blocks = values["backbone.blocks"]
            parts.append(f"{blocks} CNN block{'s' if blocks > 1 else ''}")
        if "clusterer.eta" in values:
            parts.append(f"eta {values['clusterer.eta']}")
        return (f"JULE on {self.data.name}, settings derived from {self.data.n} images of {c}x{h}x{w} pixels "
                f"and K = {values['clusters']}: " + ", ".join(parts))


def derive_from_data(recipe: dict, user_keys: set[str], *, data_dir: str | None = None,
                     source: str = "recipe") -> Derivation:
    """The derived settings for a validated ``recipe`` on its data, leaving out keys the user set.

    ``user_keys``: the dotted keys given on the command line (they win over the rules); a rule for
    a plugin the recipe does not use (``backbone.*`` without jule_cnn) is left out too.
    """
    d = recipe["data"]
    data = summarize_dataset(d["name"], data_dir=data_dir, subset=d["subset"], seed=d["subset_seed"],
                             resize=d["resize"], channels=d["channels"])
    k = recipe["clusters"]
    from_labels = k is None
    if from_labels:
        if data.n_classes is None:
            raise RecipeError(f"{source}: clusters: {d['name']} has no labels; give the number of clusters "
                              f"with --clusters K")
        k = data.n_classes
        if k < 2:
            raise RecipeError(f"{source}: clusters: {d['name']} has labels of a single class; give the number "
                              f"of clusters with --clusters K (at least 2)")
    if k > data.n:
        raise RecipeError(f"{source}: clusters: {k} clusters requested but {d['name']} has only {data.n} images; "
                          f"give --clusters K with K at most {data.n}")
    # an unrolling rate the user set (the rule does not apply to it) is the one the loss's weight follows
    chosen_eta = None if _applies("clusterer.eta", recipe, user_keys) else recipe["clusterer"].get("eta")
    rules = derive_rules(data.n, data.shape, k, mixed_sizes=data.mixed_sizes, mixed_modes=data.mixed_modes,
                         eta=chosen_eta)
    if from_labels:
        rules = [Derived(r.key, r.value, f"the number of label classes in {data.name} (--clusters K to choose)")
                 if r.key == "clusters" else r for r in rules]
    return Derivation(data, [r for r in rules if _applies(r.key, recipe, user_keys)])


def _applies(key: str, recipe: dict, user_keys: set[str]) -> bool:
    section = key.split(".")[0]
    if section == "clusters":
        return True  # the value the user gave, or the labels' classes: said either way
    if section == "backbone":
        # blocks and pool go together: a depth the user chose, or not the paper's CNN, keeps its own; other
        # backbone keys (bn_init, channels, ...) leave the depth to the rules
        return (recipe["backbone"] or {}).get("name") == "jule_cnn" and \
            not any(u in ("backbone", "backbone.blocks", "backbone.pool") for u in user_keys)
    if section in ("clusterer", "loss") and key.split(".")[-1] not in (recipe.get(section) or {}):
        return False  # a clusterer without an unrolling rate, a loss without a positive weight
    parts = key.split(".")
    return not any(".".join(parts[:i]) in user_keys for i in range(1, len(parts) + 1))
