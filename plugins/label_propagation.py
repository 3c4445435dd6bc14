from __future__ import annotations

import math
from typing import TYPE_CHECKING

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from automl.errors import UserError
from automl.hookspecs import hookimpl
from automl.technique import Technique

if TYPE_CHECKING:
    import torch

#: The paper's fixed settings: diffusion strength α, the power γ of the similarities, and
#: conjugate-gradient iterations (its solver; 20 settle the ranking of the classes).
ALPHA = 0.99
GAMMA = 3
CG_ITERATIONS = 20
#: Similarity entries one chunk of the k-NN search holds (bounds its memory to ~64 MiB).
KNN_CHUNK_ENTRIES = 1 << 24
#: Images per feature-extraction forward.
FEATURE_BATCH = 512


def knn_graph(features: torch.Tensor, k: int, gamma: float = GAMMA
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's affinities A as each image's ``k`` nearest neighbours (itself excluded)
    and their weights max(0, cos(v_i, v_j))^γ: two N×k tensors. Chunked rows, so memory
    grows with N·k, not N² (the graph W = A + Aᵀ is never built: :func:`graph_product`)."""
    import torch
    import torch.nn.functional as F

    v = F.normalize(features.float(), dim=1)
    n = len(v)
    k = max(1, min(k, n - 1))
    chunk = max(1, KNN_CHUNK_ENTRIES // max(n, 1))
    neighbours, weights = [], []
    for start in range(0, n, chunk):
        sims = v[start:start + chunk] @ v.T
        rows = torch.arange(len(sims), device=v.device)
        sims[rows, rows + start] = -math.inf  # not its own neighbour
        top, where = sims.topk(k, dim=1)
        neighbours.append(where)
        weights.append(top.clamp_min(0).pow(gamma))
    return torch.cat(neighbours), torch.cat(weights)


def graph_product(neighbours: torch.Tensor, weights: torch.Tensor,
                  x: torch.Tensor) -> torch.Tensor:
    """(A + Aᵀ) x for the graph of :func:`knn_graph` and an N×C ``x``: a gather for A, an
    ``index_add`` for Aᵀ (no sparse tensors: every device has these two), in chunks of rows
    that bound the N×k×C products to :data:`KNN_CHUNK_ENTRIES` entries."""
    import torch

    n, k = neighbours.shape
    out = torch.zeros_like(x)
    chunk = max(1, KNN_CHUNK_ENTRIES // (k * x.shape[1]))
    for start in range(0, n, chunk):
        near, w = neighbours[start:start + chunk], weights[start:start + chunk].unsqueeze(-1)
        out[start:start + chunk] += (w * x[near]).sum(1)
        out.index_add_(0, near.flatten(), (w * x[start:start + chunk].unsqueeze(1)).flatten(0, 1))
    return out


def diffuse(neighbours: torch.Tensor, weights: torch.Tensor, seeds: torch.Tensor,
            alpha: float = ALPHA, iterations: int = CG_ITERATIONS) -> torch.Tensor:
    """Z solving (I − α W_n) Z = Y by conjugate gradient, every class column at once, with
    W_n = D^-1/2 (A + Aᵀ) D^-1/2 (D: the degrees; symmetric positive definite for α < 1).
    ``seeds`` is Y: N×C, one-hot rows for the labelled images, zero rows for the others."""
    import torch

    ones = torch.ones(len(seeds), 1, device=seeds.device)
    degree = graph_product(neighbours, weights, ones).squeeze(1)
    scale = torch.where(degree > 0, degree.clamp_min(1e-12).rsqrt(), 0.0).unsqueeze(1)

    def apply(x: torch.Tensor) -> torch.Tensor:
        return x - alpha * scale * graph_product(neighbours, weights, scale * x)

    z = torch.zeros_like(seeds)
    residual = seeds.clone()
    direction = residual.clone()
    rs = residual.square().sum(0)
    for _ in range(iterations):
        towards = apply(direction)
        step = rs / (direction * towards).sum(0).clamp_min(1e-30)
        z = z + step * direction
        residual = residual - step * towards
        rs_next = residual.square().sum(0)
        direction = residual + (rs_next / rs.clamp_min(1e-30)) * direction
        rs = rs_next
    return z


def pseudo_labels(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's class and its certainty weight 1 − H(ẑ)/log C, ẑ the row's scores made a
    distribution (a row with no score at all: weight 0)."""
    import torch

    scores = scores.clamp_min(0)
    total = scores.sum(1, keepdim=True)
    p = torch.where(total > 0, scores / total.clamp_min(1e-30), 1.0 / scores.shape[1])
    entropy = -(p * p.clamp_min(1e-30).log()).sum(1)
    return p.argmax(1), (1 - entropy / math.log(scores.shape[1])).clamp(0, 1)


def class_balance(labels: torch.Tensor, pseudo: torch.Tensor, num_classes: int) -> torch.Tensor:
    """ζ_c: the inverse of each class's count among labelled and pseudo-labelled images,
    scaled so a balanced set weighs 1 per image."""
    import torch

    counts = torch.bincount(torch.cat([labels, pseudo]), minlength=num_classes).float()
    return torch.where(counts > 0, (counts.sum() / num_classes) / counts.clamp_min(1), 0.0)


def propagate(labelled: torch.Tensor, labels: torch.Tensor, unlabelled: torch.Tensor, k: int,
              num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Label propagation from the labelled features to the unlabelled ones: each unlabelled
    image's pseudo label and its weight (certainty × class balance)."""
    import torch

    n = len(labelled)
    neighbours, weights = knn_graph(torch.cat([labelled, unlabelled]), k)
    seeds = torch.zeros(len(neighbours), num_classes, device=labelled.device)
    seeds[torch.arange(n, device=labelled.device), labels] = 1.0
    pseudo, certainty = pseudo_labels(diffuse(neighbours, weights, seeds)[n:])
    return pseudo, certainty * class_balance(labels, pseudo, num_classes)[pseudo]


class LabelPropagation(Technique):
    """Label propagation: unlabelled images get labels diffused over a k-NN feature graph.

    At the start of each epoch from `warmup_epochs` on, the model (eval mode) embeds every
    training image, labelled and unlabelled (the classifier's input, as timm's
    `forward_head(pre_logits=True)` gives it); a k-nearest-neighbour graph on cosine
    similarity (to the power 3) carries the labels to the unlabelled images (α = 0.99, 20
    conjugate-gradient steps). Each unlabelled image gets the strongest class as a pseudo
    label, weighted by its certainty (1 − normalised entropy) and its class's inverse
    frequency; every training step then adds `weight` × the weighted cross-entropy of one
    batch of them (random shift, optional flip; batch norm's running statistics stay those
    of the labelled batches). Needs unlabelled images
    (`data.labelled_fraction` below 1, or a folder's `unlabelled/`) and a timm-style model.
    Helps: few labels with many unlabelled images, once the features separate the classes
    somewhat (hence the warm-up on the labels alone).
    Suggested: k 50 (the paper's), warm-up a third to a half of the epochs, weight 1.
    Source: Iscen et al., "Label Propagation for Deep Semi-supervised Learning" (2019); Zhou
    et al., "Learning with Local and Global Consistency" (2004).
    """

    name = "label_propagation"
    space = {
        "k": IntDistribution(5, 50),
        "warmup_epochs": IntDistribution(0, 5),
        "weight": FloatDistribution(0.25, 4.0, log=True),
        "flip": CategoricalDistribution([True, False]),
    }
    defaults = {"k": 50, "warmup_epochs": 1, "weight": 1.0, "flip": True}
    limits = {"k": (1, None), "warmup_epochs": (0, None), "weight": (0.0, 100.0)}
    needs_unlabelled = True

    def __init__(self, **params):
        super().__init__(**params)
        self._labels: torch.Tensor | None = None  # pseudo label of every unlabelled image
        self._weights: torch.Tensor | None = None  # and its weight

    @hookimpl
    def on_train_start(self, state):
        from automl.plugins.unlabelled_data import DrawPerBatch, require_unlabelled

        require_unlabelled(state, self.name)
        self._draws = DrawPerBatch()
        if not callable(getattr(state.model, "forward_head", None)):
            raise UserError(f"label_propagation: model {state.recipe.model} has no "
                            "forward_head(pre_logits=True) (a timm model) to take features from")

    @hookimpl
    def on_epoch_start(self, state):
        if state.epoch < self.params["warmup_epochs"]:
            return
        labelled = _features(state, state.data.train)
        unlabelled = _features(state, state.data.unlabelled)
        labels = state.data.train.labels.to(state.device)
        self._labels, self._weights = propagate(labelled, labels, unlabelled, self.params["k"],
                                                state.num_classes)

    @hookimpl
    def after_loss(self, state):
        if self._labels is None:
            return
        import torch.nn.functional as F
        from automl.plugins.unlabelled_data import norm_statistics_kept

        from automl.trainer import autocast

        images, labels, weights = self._draws.get(state, self._draw)
        with autocast(state), norm_statistics_kept(state.model):
            logits = state.train_model(images)
        losses = F.cross_entropy(logits.float(), labels, reduction="none")
        state.loss = state.loss + self.params["weight"] * (losses * weights).mean()

    def _draw(self, state) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch of pseudo-labelled images (weakly augmented, normalised), their pseudo
        labels and weights."""
        import torch
        from automl.plugins.unlabelled_data import images_at, model_input, weak_augment

        gen = state.generator
        idx = torch.randint(len(self._labels), (state.batch_size,), device=gen.device,
                            generator=gen).to(state.device)
        images = images_at(state.data.unlabelled, idx, state)
        images = model_input(state, weak_augment(images, self.params["flip"], gen))
        return images, self._labels[idx], self._weights[idx]


def _features(state, split) -> torch.Tensor:
    """The classifier's input for every image of ``split`` (normalised as for training, at
    the training resolution), the plain model in eval mode, without gradients."""
    import torch
    from automl.plugins.unlabelled_data import model_input

    from automl.trainer import autocast, device_batches

    model = state.model
    was_training = model.training
    model.eval()
    chunks = torch.arange(len(split), device=state.device).split(FEATURE_BATCH)
    out = []
    with torch.no_grad(), autocast(state):
        for images, _ in device_batches(split, chunks, state):
            x = model.forward_features(model_input(state, images))
            out.append(model.forward_head(x, pre_logits=True).float().flatten(1))
    model.train(was_training)
    return torch.cat(out)
