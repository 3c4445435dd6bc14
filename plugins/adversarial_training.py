from __future__ import annotations

from typing import TYPE_CHECKING, Any

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from automl.functional import resize
from automl.hookspecs import hookimpl
from automl.technique import Technique, When

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    Model = Callable[[torch.Tensor], torch.Tensor]
    Bound = torch.Tensor | float

#: PGD's step size as a multiple of ε / steps (Madry et al.'s heuristic, as in their
#: ``robustness`` library): a few steps can still cross the ball and come back.
PGD_STEP_FACTOR = 2.5
#: Evaluation batch size of the robust accuracy (the trainer's own evaluation uses the same).
EVAL_CHUNK = 512


def _input_gradient(model: Model, images: torch.Tensor, targets: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the summed cross-entropy with respect to the input only, and the logits.

    ``torch.autograd.grad`` with the input as the only leaf asked for: no parameter's
    ``.grad`` is written. ``targets`` are class indices or soft labels (N×classes, after
    mixup or cutmix); the summed loss makes each sample's gradient independent of the batch.
    """
    import torch
    import torch.nn.functional as F

    x = images.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x).float()
        loss = F.cross_entropy(logits, targets, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad, logits.detach()


def fgsm(model: Model, images: torch.Tensor, targets: torch.Tensor, eps: Bound, lo: Bound,
         hi: Bound) -> torch.Tensor:
    """FGSM: one step of ``eps · sign(∇x loss)``, clamped to the valid input range [lo, hi].

    All of ``eps``, ``lo`` and ``hi`` are in the units of ``images`` (normalised), as numbers
    or tensors broadcasting over N×C×H×W (per channel or per pixel): :func:`input_space`.
    """
    import torch

    grad, _ = _input_gradient(model, images, targets)
    return torch.clamp(images.detach() + eps * grad.sign(), lo, hi)


def pgd(model: Model, images: torch.Tensor, targets: torch.Tensor, eps: Bound, alpha: Bound,
        steps: int, lo: Bound, hi: Bound, generator: torch.Generator) -> torch.Tensor:
    """PGD: a uniform random start in the L∞ ε-ball, then ``steps`` signed-gradient steps of
    size ``alpha``, each projected back onto the ball and the valid range [lo, hi]."""
    import torch

    clean = images.detach()
    noise = torch.rand(clean.shape, device=clean.device, dtype=clean.dtype, generator=generator)
    adv = torch.clamp(clean + (2 * noise - 1) * eps, lo, hi)
    for _ in range(steps):
        grad, _ = _input_gradient(model, adv, targets)
        adv = adv + alpha * grad.sign()
        adv = torch.clamp(torch.minimum(torch.maximum(adv, clean - eps), clean + eps), lo, hi)
    return adv


def input_space(mean: Any, std: Any, size: int, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What one [0, 1] pixel unit, 0 and 1 are after normalisation ``(x - mean) / std``:
    ``(unit, lo, hi)``, each 1×C×1×1 (per-channel statistics) or 1×C×size×size (per-pixel
    maps, resized bilinearly when the batch is not at the stored size: an approximation, as
    the resized batch itself is)."""
    import torch

    def as_image(values) -> torch.Tensor:
        t = torch.as_tensor(values, dtype=torch.float32, device=device)
        return t.view(1, -1, 1, 1) if t.dim() == 1 else t.unsqueeze(0)

    mean, std = as_image(mean), as_image(std)
    unit, lo, hi = 1 / std, -mean / std, (1 - mean) / std
    if unit.shape[-1] != 1:
        unit, lo, hi = (resize(t, size) for t in (unit, lo, hi))
    return unit, lo, hi


def robust_correct(model: Model, images: torch.Tensor, labels: torch.Tensor, eps: Bound,
                   lo: Bound, hi: Bound) -> torch.Tensor:
    """Per sample: classified correctly both as given and after an FGSM attack of ``eps``.

    The clean image lies in its own ε-ball, so a point is robust only if both are right;
    robust accuracy is then never above clean accuracy, and equals it at ε = 0.
    """
    import torch

    grad, clean_logits = _input_gradient(model, images, labels)
    adv = torch.clamp(images.detach() + eps * grad.sign(), lo, hi)
    with torch.no_grad():
        adv_logits = model(adv).float()
    return (clean_logits.argmax(1) == labels) & (adv_logits.argmax(1) == labels)


class AdversarialTraining(Technique):
    """Adversarial training: replace a fraction of each batch by FGSM or PGD attacks on it.

    After mixup/cutmix (``trylast``), a random ``fraction`` of every training batch is
    replaced by its adversarial version: FGSM, one step of ε·sign(∇x loss) (Goodfellow et
    al.), or PGD, a random start in the L∞ ε-ball then ``pgd_steps`` steps of 2.5·ε/steps,
    projected (Madry et al.). ε is in [0, 1] pixel units (0.1 = a tenth of the range) and
    converted per channel, or per pixel with input_norm's pixel statistics, to the
    normalised input; attacked images stay valid images (within [0, 1] before
    normalisation). The attack uses a plain cross-entropy on the targets (soft after
    mixing) and the model in eval mode: batch-norm running statistics are not moved by the
    attack's forwards, dropout draws nothing, and the attack sees the function evaluation
    sees; the mode is restored and no parameter gradient is written. Every evaluation adds
    ``robust_acc``: the share of the split classified correctly both clean and under FGSM
    at ``eval_epsilon`` (a measurement setting: the default space fixes it, so trials
    compare; set it to your threat model, e.g. 8/255 ≈ 0.031 for CIFAR), measured on the
    evaluated model (EMA weights and test-time augmentation included) at the evaluation
    resolution (inference_resize's), without running ``eval_batch`` hooks. It costs a
    forward, a backward and a forward per evaluated batch: evaluation takes about four
    times as long; training costs one extra forward and backward (PGD: ``pgd_steps``) on
    the attacked fraction.
    Report or optimise it with ``study: {metric: val/robust_acc}``, the technique fixed on.
    Helps: robustness to small worst-case input perturbations, usually at some cost in clean
    accuracy; occasionally a regulariser on small data. FGSM training at large ε can overfit
    to its own attack (robust to FGSM, not to PGD): prefer PGD there.
    Suggested: ε at or slightly above the evaluation ε (0.1 on MNIST-like grey images,
    8/255 on CIFAR); fraction 0.5 (Goodfellow's equal clean/adversarial mix) to 1.0 (Madry).
    Source: Goodfellow et al., "Explaining and Harnessing Adversarial Examples" (2015); Madry
    et al., "Towards Deep Learning Models Resistant to Adversarial Attacks" (2018).
    """

    name = "adversarial_training"
    space = {
        "attack": CategoricalDistribution(["fgsm", "pgd"]),
        "epsilon": FloatDistribution(0.02, 0.2, log=True),
        "fraction": FloatDistribution(0.25, 1.0),
        "pgd_steps": IntDistribution(1, 10),
        "eval_epsilon": CategoricalDistribution([0.1]),
    }
    defaults = {"attack": "fgsm", "epsilon": 0.1, "fraction": 0.5, "pgd_steps": 3,
                "eval_epsilon": 0.1}
    conditions = {"pgd_steps": When("attack", {"pgd": IntDistribution(2, 5)})}
    limits = {"epsilon": (0.0, 1.0), "fraction": (0.0, 1.0), "pgd_steps": (1, 100)}
    #: Metrics this technique's ``evaluate`` adds, usable as a study's metric (val/robust_acc).
    metrics = {"robust_acc": "maximize"}

    @classmethod
    def check_value(cls, param, value):
        if param == "eval_epsilon":  # any ε may be fixed: the space's one value is a default
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0.0 <= value <= 1.0:
                return f"expected a number in [0, 1] ([0, 1] pixel units), got {value!r}"
            return None
        return super().check_value(param, value)

    def _input_space(self, state, size: int):
        """:func:`input_space` for ``size``, built once per statistics and size (a host copy
        of the statistics happens once, not per batch)."""
        cache = state.extras.get(self.name)
        if cache is None or cache["mean"] is not state.input_mean \
                or cache["std"] is not state.input_std:  # a hook changed the statistics
            cache = state.extras[self.name] = {"mean": state.input_mean,
                                               "std": state.input_std}
        if size not in cache:
            cache[size] = input_space(state.input_mean, state.input_std, size, state.device)
        return cache[size]

    @hookimpl(trylast=True)
    def on_batch(self, state):
        """Attack after every other batch change (mixup, cutmix, erasing), on the model in
        eval mode; the attacked images replace a random subset of the batch."""
        import torch

        from automl.trainer import autocast

        images, n = state.images, len(state.images)
        count = round(self.params["fraction"] * n)
        if count == 0:
            return
        pick = torch.randperm(n, device=images.device, generator=state.generator)[:count]
        unit, lo, hi = self._input_space(state, images.shape[-1])
        eps = float(self.params["epsilon"]) * unit
        model, was_training = state.model, state.model.training
        model.eval()
        try:
            with autocast(state):
                if self.params["attack"] == "pgd":
                    steps = int(self.params["pgd_steps"])
                    adv = pgd(model, images[pick], state.targets[pick], eps,
                              PGD_STEP_FACTOR * eps / steps, steps, lo, hi, state.generator)
                else:
                    adv = fgsm(model, images[pick], state.targets[pick], eps, lo, hi)
        finally:
            model.train(was_training)
        state.images = images.index_copy(0, pick, adv.to(images.dtype))

    @hookimpl
    def evaluate(self, state, split):
        return {"robust_acc": robust_accuracy(state, split, float(self.params["eval_epsilon"]))}


def robust_accuracy(state, split, eps: float) -> float:
    """Share of ``split`` that ``state.eval_model`` classifies correctly both clean and under
    FGSM at ``eps`` ([0, 1] pixel units), batched and normalised as evaluation is, at the
    evaluation resolution."""
    import torch

    from automl.trainer import autocast, device_batches, normalise_batch

    model = state.eval_model
    size = state.eval_image_size or state.image_size
    unit, lo, hi = input_space(state.input_mean, state.input_std, state.image_size,
                               state.device)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(resize(x, size))

    was_training = model.training
    model.eval()
    hits = torch.zeros((), dtype=torch.int64, device=state.device)
    chunks = torch.arange(len(split.labels), device=state.device).split(EVAL_CHUNK)
    try:
        with autocast(state):
            for images, labels in device_batches(split, chunks, state):
                hits += robust_correct(forward, normalise_batch(state, images), labels,
                                       eps * unit, lo, hi).sum()
    finally:
        model.train(was_training)
    return hits.item() / max(len(split.labels), 1)
