"""A recipe in the terms of other training scripts: timm's ``train.py`` and torchvision's
classification reference (``references/classification/train.py``).

Each target is one table: technique name -> a function from the technique's parameters to that
script's options, and the notes on what the options cannot say. A technique missing from a
table has no equivalent there. Nothing is dropped silently: every difference is either an
"approximated" note (an option is written, but it does not do exactly what the recipe did) or
a "not mapped" note (no option is written for it), and both lists head the exported file.

The option names, dests and value forms come from the scripts' argument lists, kept as facts in
``tests/data/*_train_args.txt``; ``tests/test_exports.py`` checks every option written here
against them.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from automl.provenance import provenance_lines
from automl.recipe import Recipe
from automl.yamlio import dump_yaml

__all__ = ["FORMATS", "DataShape", "Export", "timm_export", "torchvision_export", "render",
           "data_shape", "export_text"]

FORMATS = ("recipe", "timm", "torchvision")
MOMENTUM_OPTIMIZERS = ("sgd", "nesterov", "rmsprop")  # trained with momentum 0.9


@dataclass(frozen=True)
class DataShape:
    """What the scripts need to know about the data that a recipe only names."""

    image_size: int
    in_chans: int
    num_classes: int


@dataclass
class Export:
    """A recipe as one script's options, with what they do not say exactly."""

    options: dict[str, Any] = field(default_factory=dict)
    approximated: list[str] = field(default_factory=list)
    not_mapped: list[str] = field(default_factory=list)

    def add(self, other: Export) -> None:
        self.options.update(other.options)
        self.approximated += other.approximated
        self.not_mapped += other.not_mapped


@dataclass(frozen=True)
class _Context:
    """What several mappings need: the training length and batch as the recipe trained."""

    recipe: Recipe
    shape: DataShape | None
    epochs: int  # after long_training
    batch_size: int  # per step
    lr_scale: float  # the batch_size technique's LR scaling


#: One technique's translation: its parameters -> the options (and notes) of one script.
Translation = Callable[[dict[str, Any], _Context], Export]


def _context(recipe: Recipe, shape: DataShape | None) -> _Context:
    from automl.functional import lr_scale
    from automl.plugins.long_training import scaled_epochs

    t = recipe.techniques
    epochs = recipe.epochs
    if "long_training" in t:
        epochs = scaled_epochs(epochs, t["long_training"]["multiplier"])
    reference = recipe.data["batch_size"]
    batch, scale = reference, 1.0
    if "batch_size" in t:
        batch = t["batch_size"]["size"]
        steps = t.get("grad_accumulation", {}).get("steps", 1)
        scale = lr_scale(t["batch_size"]["lr_scaling"], batch * steps, reference)
    return _Context(recipe, shape, epochs, batch, scale)


def _export(options: dict[str, Any] | None = None, approximated: list[str] | None = None,
            not_mapped: list[str] | None = None) -> Export:
    return Export(dict(options or {}), list(approximated or []), list(not_mapped or []))


def _warmup_epochs(p: dict[str, Any], ctx: _Context, notes: list[str]) -> int:
    """The warmup as whole epochs (the scripts count warmup in epochs)."""
    exact = p["warmup"] * ctx.epochs
    warm = round(exact)
    if abs(exact - warm) > 1e-6:
        notes.append(f"lr_schedule.warmup {p['warmup']:g} of {ctx.epochs} epochs = {exact:g} "
                     f"epochs, rounded to {warm}")
    return warm


def _randaugment_bin_to_timm(magnitude: int, notes: list[str]) -> int:
    """Our RandAugment magnitude is a bin of 31 (torchvision's 0-30); timm's levels are 0-10."""
    level = round(magnitude / 3)
    if magnitude % 3:
        notes.append(f"augment_policy.magnitude {magnitude} (of 30) is timm level "
                     f"{magnitude / 3:.2f} (of 10), rounded to {level}")
    return level


# ---------------------------------------------------------------------------------------------
# timm train.py: options by argparse dest, as args.yaml holds them
# ---------------------------------------------------------------------------------------------

def _timm_optimizer(p, ctx):
    from automl.plugins.optimizer import TIMM_OPTIMIZERS

    opt, kwargs = TIMM_OPTIMIZERS[p["name"]]
    options = {"opt": opt, "lr": p["lr"] * ctx.lr_scale}
    if p["name"] in MOMENTUM_OPTIMIZERS:
        options["momentum"] = 0.9  # timm's factory default, as trained
    if kwargs:
        options["opt_kwargs"] = dict(kwargs)
    return _export(options)


def _timm_weight_decay(p, ctx):
    not_mapped = [] if p["exclude_norm_bias"] else [
        "weight_decay.exclude_norm_bias false: timm's train.py always exempts biases and "
        "norm weights (1-d parameters) from weight decay"]
    return _export({"weight_decay": p["value"]}, not_mapped=not_mapped)


def _timm_lr_schedule(p, ctx):
    approximated: list[str] = []
    if p["schedule"] == "onecycle":  # its own warmup: at least 5% of training
        p = {**p, "warmup": max(p["warmup"], 0.05), "warmup_shape": "linear"}
    warm = _warmup_epochs(p, ctx, approximated)
    after = max(1, ctx.epochs - warm)  # timm's warmup_prefix: the schedule runs after warmup
    options: dict[str, Any] = {"sched_on_updates": True, "warmup_epochs": warm,
                               "warmup_lr": 0.0, "warmup_prefix": True, "min_lr": 0.0,
                               "epochs": after}
    if warm and p["warmup_shape"] != "linear":
        approximated.append(f"lr_schedule.warmup_shape {p['warmup_shape']}: timm warms up "
                            "linearly")
    schedule = p["schedule"]
    if schedule == "cosine":
        options.update(sched="cosine")
    elif schedule == "cosine_restarts":
        cycles = p["cycles"]
        first = after / (2 ** cycles - 1)
        options.update(sched="cosine", epochs=max(1, round(first)), lr_cycle_mul=2.0,
                       lr_cycle_limit=cycles, lr_cycle_decay=1.0)
        approximated.append(f"lr_schedule cosine_restarts ({cycles} cycles): epochs is the "
                            "first cycle's length, timm trains all cycles (each twice as long)"
                            + ("" if first == round(first) else
                               f"; first cycle {first:g} epochs rounded"))
    elif schedule == "step":  # ÷10 at 1/2 and 3/4 of the post-warmup part
        options.update(sched="multistep", decay_rate=0.1,
                       decay_milestones=[round(after * 0.5), round(after * 0.75)])
    elif schedule == "exponential":  # to 1% at the end
        options.update(sched="step", decay_epochs=1.0, decay_rate=0.01 ** (1 / after))
        approximated.append("lr_schedule exponential: timm decays once per epoch, this "
                            "project every step")
    elif schedule == "constant":
        options.update(sched="step", decay_epochs=float(after), decay_rate=1.0)
    elif schedule == "onecycle":
        options.update(sched="cosine", warmup_lr=_trained_lr(ctx) / 25)
        approximated.append("lr_schedule onecycle: timm has none; written as a linear warmup "
                            "from lr/25 then cosine decay (one-cycle warms up along a cosine)")
    return _export(options, approximated)


def _trained_lr(ctx: _Context) -> float:
    """The base LR the recipe trained with (after batch-size scaling)."""
    return ctx.recipe.techniques.get("optimizer", {}).get("lr", 0.05) * ctx.lr_scale


def _timm_augment_policy(p, ctx):
    policy = p["policy"]
    approximated: list[str] = ["augment_policy: timm's own op implementations"]
    if policy == "randaugment":
        level = _randaugment_bin_to_timm(p["magnitude"], approximated)
        return _export({"aa": f"rand-m{level}-n{p['num_ops']}-p1.0"}, approximated)
    if policy == "trivialaugment":
        approximated.append("augment_policy trivialaugment: timm has no TrivialAugment; "
                            "written as RandAugment with one op at a uniformly drawn magnitude")
        return _export({"aa": "rand-m10-n1-mstd101-p1.0"}, approximated)
    if policy == "autoaugment_imagenet":
        return _export({"aa": "original"}, approximated)
    return _export(not_mapped=[f"augment_policy {policy}: timm has only ImageNet's "
                               "AutoAugment policies"])


def _timm_augmix(p, ctx):
    if ctx.recipe.techniques.get("augment_policy"):
        return _export(not_mapped=["augmix: timm takes one --aa, used by augment_policy"])
    return _export({"aa": f"augmix-m{p['severity']}-w{p['mixture_width']}"},
                   ["augmix: timm's own op implementations"])


def _timm_mixing(ctx: _Context) -> list[str]:
    if {"mixup", "cutmix"} <= set(ctx.recipe.techniques):
        return ["mixup + cutmix: timm picks one of them per batch (mixup_switch_prob 0.5); "
                "this project applies both to every batch"]
    return []


def _timm_mixup(p, ctx):
    return _export({"mixup": p["alpha"], "mixup_prob": 1.0, "mixup_mode": "elem"},
                   _timm_mixing(ctx))


def _timm_cutmix(p, ctx):
    return _export({"cutmix": p["alpha"], "mixup_prob": 1.0, "mixup_mode": "elem"})


def _erase_area(p) -> list[str]:
    if abs(p["area_max"] - 1 / 3) > 0.01:
        return [f"random_erasing.area_max {p['area_max']:g}: the script erases at most 1/3 of "
                "the image"]
    return []


def _timm_random_erasing(p, ctx):
    return _export({"reprob": p["p"], "remode": "pixel" if p["fill"] == "random" else "const",
                    "recount": 1}, _erase_area(p))


def _timm_ema(p, ctx):
    return _export({"model_ema": True, "model_ema_decay": p["decay"]},
                   ["ema: timm uses the decay from the first step; this project warms it up "
                    "(min(decay, (1 + step) / (10 + step)))"])


def _timm_repeated(p, ctx):
    return _export({"aug_repeats": float(p["repeats"])},
                   ["repeated_augmentation: timm's sampler works in distributed runs only "
                    "(torchrun); a single process refuses aug_repeats"])


def _timm_input_norm(p, ctx):
    from automl.plugins.input_norm import constant_stats

    if p["stats"] == "pixel" or ctx.shape is None:
        return _export(not_mapped=[f"input_norm {p['stats']}: timm normalises per channel "
                                   "(set mean/std)"])
    mean, std = constant_stats(p["stats"], ctx.shape.in_chans)
    return _export({"mean": list(mean), "std": list(std)})


def _timm_transfer(p, ctx):
    not_mapped = ([f"transfer_learning.freeze_epochs {p['freeze_epochs']}: timm's train.py "
                   "does not freeze layers"] if p["freeze_epochs"] else [])
    return _export({"initial_checkpoint": p["checkpoint"]}, not_mapped=not_mapped)


#: technique -> timm train.py options (by dest, as args.yaml holds them)
TIMM: dict[str, Translation] = {
    "optimizer": _timm_optimizer,
    "lr_schedule": _timm_lr_schedule,
    "weight_decay": _timm_weight_decay,
    "batch_size": lambda p, ctx: _export({"batch_size": p["size"]}),
    "grad_accumulation": lambda p, ctx: _export({"grad_accum_steps": p["steps"]}),
    "long_training": lambda p, ctx: _export(),  # in epochs (see _context)
    "label_smoothing": lambda p, ctx: _export({"smoothing": p["smoothing"]}),
    "mixup": _timm_mixup,
    "cutmix": _timm_cutmix,
    "augment_policy": _timm_augment_policy,
    "augmix": _timm_augmix,
    "random_erasing": _timm_random_erasing,
    "ema": _timm_ema,
    "dropout": lambda p, ctx: _export({"drop": p["rate"]}),
    "stochastic_depth": lambda p, ctx: _export({"drop_path": p["rate"]}),
    "grad_clip": lambda p, ctx: _export({"clip_grad": p["max_norm"], "clip_mode": "norm"}),
    "repeated_augmentation": _timm_repeated,
    "flip": lambda p, ctx: _export({"hflip": p["p"]}),
    "binary_cross_entropy": lambda p, ctx: _export({"bce_loss": True}),
    "sync_batch_norm": lambda p, ctx: _export({"sync_bn": True}),
    "input_norm": _timm_input_norm,
    "transfer_learning": _timm_transfer,
}

#: Why a technique has no timm option (the default: "no equivalent option").
TIMM_MISSING = {
    "random_crop": "timm crops with RandomResizedCrop (set to a plain resize here: scale and "
                   "ratio 1); pad-and-crop translation has no option",
    "fixres": "timm evaluates at the training size (no separate test size, no BN "
              "recalibration)",
    "inference_resize": "timm evaluates at the training size",
    "progressive_resizing": "no per-epoch training size schedule",
    "early_stopping": "train.py has no early stopping",
}


def timm_export(recipe: Recipe, shape: DataShape | None) -> Export:
    """The recipe as timm ``train.py`` options (argparse dests: the keys of ``args.yaml``)."""
    ctx = _context(recipe, shape)
    out = _export({"model": recipe.model, "seed": recipe.seed,
                   "batch_size": recipe.data["batch_size"], "epochs": ctx.epochs})
    if shape is not None:
        out.options.update(num_classes=shape.num_classes, in_chans=shape.in_chans,
                           img_size=_train_size(recipe, shape))
    else:
        out.not_mapped.append("num_classes, in_chans, img_size: the data was not found here; "
                              "set them")
    # what timm does by default that an off technique of this recipe does not do
    out.options.update({"smoothing": 0.0, "weight_decay": 0.0, "hflip": 0.0,
                        "color_jitter": 0.0, "scale": [1.0, 1.0], "ratio": [1.0, 1.0],
                        "crop_pct": 1.0, "interpolation": "bilinear",
                        "train_interpolation": "bilinear"})
    _map_all(recipe, ctx, TIMM, TIMM_MISSING, out)
    if recipe.model.startswith("automl_"):
        out.approximated.append(f"model {recipe.model}: this project's network, known to timm "
                                "after `import automl` (add that line to train.py)")
    if "input_norm" not in recipe.techniques:
        out.not_mapped.append("input normalisation: this project uses the training split's "
                              "per-channel mean/std; set mean/std to them")
    return out


def _train_size(recipe: Recipe, shape: DataShape) -> int:
    fixres = recipe.techniques.get("fixres")
    return max(1, round(shape.image_size * fixres["train_scale"])) if fixres else shape.image_size


def _map_all(recipe: Recipe, ctx: _Context, table: dict[str, Translation], missing: dict[str, str],
             out: Export) -> None:
    for name, params in recipe.techniques.items():
        if name in table:
            out.add(table[name](params, ctx))
        else:
            values = ", ".join(f"{k} {v}" for k, v in params.items())
            why = missing.get(name, "no equivalent option")
            out.not_mapped.append(f"{name}{f' ({values})' if values else ''}: {why}")


# ---------------------------------------------------------------------------------------------
# torchvision references/classification/train.py: command-line flags
# ---------------------------------------------------------------------------------------------

TORCHVISION_OPTIMIZERS = {"sgd": "sgd", "nesterov": "sgd_nesterov", "adamw": "adamw",
                          "rmsprop": "rmsprop"}


def _tv_optimizer(p, ctx):
    options = {"--lr": p["lr"] * ctx.lr_scale}
    if p["name"] not in TORCHVISION_OPTIMIZERS:
        return _export(options, not_mapped=[f"optimizer {p['name']}: the script has SGD, "
                                            "RMSprop and AdamW only (it will use SGD)"])
    options = {"--opt": TORCHVISION_OPTIMIZERS[p["name"]], **options}
    approximated = []
    if p["name"] in MOMENTUM_OPTIMIZERS:
        options["--momentum"] = 0.9
    if p["name"] == "rmsprop":
        approximated.append("optimizer rmsprop: the script uses eps 0.0316 (TF-style), timm's "
                            "factory its own")
    return _export(options, approximated)


def _tv_weight_decay(p, ctx):
    options: dict[str, Any] = {"--weight-decay": p["value"]}
    if p["exclude_norm_bias"]:
        options.update({"--norm-weight-decay": 0.0, "--bias-weight-decay": 0.0})
    return _export(options)


def _tv_lr_schedule(p, ctx):
    approximated = ["lr_schedule: the script steps its schedule once per epoch, this project "
                    "every step"]
    if p["schedule"] == "onecycle":  # its own warmup: at least 5% of training
        p = {**p, "warmup": max(p["warmup"], 0.05), "warmup_shape": "linear"}
    warm = _warmup_epochs(p, ctx, approximated)
    after = max(1, ctx.epochs - warm)
    options: dict[str, Any] = {}
    if warm:
        shape = p["warmup_shape"]
        if shape == "constant":  # 0.1 × LR during warmup, as He et al.
            options.update({"--lr-warmup-epochs": warm, "--lr-warmup-method": "constant",
                            "--lr-warmup-decay": 0.1})
        else:
            options.update({"--lr-warmup-epochs": warm, "--lr-warmup-method": "linear",
                            "--lr-warmup-decay": 0.01})
            if shape != "linear":
                approximated.append(f"lr_schedule.warmup_shape {shape}: written as linear")
    schedule = p["schedule"]
    if schedule == "cosine":
        options["--lr-scheduler"] = "cosineannealinglr"
    elif schedule == "exponential":
        options.update({"--lr-scheduler": "exponentiallr", "--lr-gamma": 0.01 ** (1 / after)})
    elif schedule == "constant":
        options.update({"--lr-scheduler": "steplr", "--lr-step-size": ctx.epochs,
                        "--lr-gamma": 1.0})
    elif schedule == "step":
        options.update({"--lr-scheduler": "steplr", "--lr-step-size": max(1, round(after / 2)),
                        "--lr-gamma": 0.1})
        approximated.append("lr_schedule step (÷10 at 1/2 and 3/4 of training): steplr "
                            "divides by 10 at 1/2 only (it has a fixed period)")
    else:
        options["--lr-scheduler"] = "cosineannealinglr"
        approximated.append(f"lr_schedule {schedule}: the script has no {schedule}; written as "
                            "cosine annealing after the warmup")
    return _export(options, approximated)


def _tv_augment_policy(p, ctx):
    policy = p["policy"]
    if policy == "trivialaugment":
        return _export({"--auto-augment": "ta_wide"})
    if policy == "randaugment":
        approximated = [] if p["num_ops"] == 2 else [
            f"augment_policy.num_ops {p['num_ops']}: the script's RandAugment uses 2"]
        return _export({"--auto-augment": "ra", "--ra-magnitude": p["magnitude"]},
                       approximated)
    return _export({"--auto-augment": policy.removeprefix("autoaugment_")})


def _tv_augmix(p, ctx):
    if ctx.recipe.techniques.get("augment_policy"):
        return _export(not_mapped=["augmix: the script takes one --auto-augment, used by "
                                   "augment_policy"])
    approximated = [] if p["mixture_width"] == 3 else [
        f"augmix.mixture_width {p['mixture_width']}: the script's AugMix uses 3"]
    return _export({"--auto-augment": "augmix", "--augmix-severity": p["severity"]},
                   approximated)


def _tv_mixing(ctx: _Context) -> list[str]:
    notes = ["mixup/cutmix: the script draws one mixing weight per batch, this project one "
             "per sample"]
    if {"mixup", "cutmix"} <= set(ctx.recipe.techniques):
        notes.append("mixup + cutmix: the script picks one of them per batch; this project "
                     "applies both")
    return notes


def _tv_random_erasing(p, ctx):
    approximated = _erase_area(p)
    if p["fill"] == "random":
        approximated.append("random_erasing.fill random: the script erases with zeros")
    return _export({"--random-erase": p["p"]}, approximated)


def _tv_ema(p, ctx):
    """The script updates the EMA every ``--model-ema-steps`` steps with a decay rescaled by
    world_size × batch_size × steps / epochs; written so that one GPU gets ``decay`` per step."""
    adjust = ctx.batch_size * 1 / ctx.epochs
    written = 1.0 - (1.0 - p["decay"]) / adjust
    approximated = [f"ema: the script rescales --model-ema-decay by GPUs x batch x steps / "
                    f"epochs; {written:.8g} gives {p['decay']:g} per step on 1 GPU (recompute "
                    "for more GPUs); it also restarts the average during warmup"]
    if written < 0:
        written = 0.0
        approximated.append("ema: the decay is too low for this batch and epoch count; "
                            "written as 0")
    return _export({"--model-ema": True, "--model-ema-steps": 1,
                    "--model-ema-decay": written}, approximated)


def _tv_flip(p, ctx):
    if p["p"] == 0.5:
        return _export()  # the script's fixed horizontal flip
    return _export(not_mapped=[f"flip p {p['p']:g}: the script always flips with p 0.5"])


def _tv_input_norm(p, ctx):
    if p["stats"] == "imagenet":
        return _export()  # the script's fixed normalisation
    return _export(not_mapped=[f"input_norm {p['stats']}: the script normalises with "
                               "ImageNet's mean/std"])


def _tv_fixres(p, ctx):
    return _export(approximated=["fixres: the training crop is smaller as in the recipe, but "
                                 "the script does not recalibrate batch norm at the test size"])


#: technique -> torchvision reference script flags
TORCHVISION: dict[str, Translation] = {
    "optimizer": _tv_optimizer,
    "lr_schedule": _tv_lr_schedule,
    "weight_decay": _tv_weight_decay,
    "batch_size": lambda p, ctx: _export({"--batch-size": p["size"]}),
    "long_training": lambda p, ctx: _export(),  # in --epochs (see _context)
    "label_smoothing": lambda p, ctx: _export({"--label-smoothing": p["smoothing"]}),
    "mixup": lambda p, ctx: _export({"--mixup-alpha": p["alpha"]}, _tv_mixing(ctx)),
    "cutmix": lambda p, ctx: _export(
        {"--cutmix-alpha": p["alpha"]}, [] if "mixup" in ctx.recipe.techniques else
        _tv_mixing(ctx)),
    "augment_policy": _tv_augment_policy,
    "augmix": _tv_augmix,
    "random_erasing": _tv_random_erasing,
    "ema": _tv_ema,
    "grad_clip": lambda p, ctx: _export({"--clip-grad-norm": p["max_norm"]}),
    "repeated_augmentation": lambda p, ctx: _export(
        {"--ra-sampler": True, "--ra-reps": p["repeats"]},
        ["repeated_augmentation: the script uses its sampler in distributed runs only "
         "(torchrun)"]),
    "flip": _tv_flip,
    "sync_batch_norm": lambda p, ctx: _export({"--sync-bn": True}),
    "input_norm": _tv_input_norm,
    "fixres": _tv_fixres,
    "inference_resize": lambda p, ctx: _export(),  # in --val-*-size (see torchvision_export)
}

TORCHVISION_MISSING = {
    "dropout": "the script has no dropout option (each torchvision model fixes its own)",
    "stochastic_depth": "the script has no drop-path option (each model fixes its own)",
    "grad_accumulation": "the script has no gradient accumulation",
    "random_crop": "the script crops with RandomResizedCrop only",
    "binary_cross_entropy": "the script trains with cross-entropy only",
    "transfer_learning": "--weights takes torchvision's named weights only",
    "progressive_resizing": "no per-epoch training size schedule",
    "early_stopping": "the script has no early stopping",
}


def torchvision_export(recipe: Recipe, shape: DataShape | None) -> Export:
    """The recipe as flags of torchvision's ``references/classification/train.py``."""
    ctx = _context(recipe, shape)
    out = _export({"--model": recipe.model, "--batch-size": recipe.data["batch_size"],
                   "--epochs": ctx.epochs})
    if shape is not None:
        scale = recipe.techniques.get("inference_resize", {}).get("scale", 1.0)
        eval_size = max(1, round(shape.image_size * scale))
        out.options.update({"--train-crop-size": _train_size(recipe, shape),
                            "--val-resize-size": eval_size, "--val-crop-size": eval_size,
                            "--interpolation": "bilinear"})
        if shape.in_chans != 3:
            out.not_mapped.append(f"{shape.in_chans}-channel images: the script reads RGB "
                                  "images")
    else:
        out.not_mapped.append("image sizes: the data was not found here; set --train-crop-size "
                              "--val-resize-size --val-crop-size")
    _map_all(recipe, ctx, TORCHVISION, TORCHVISION_MISSING, out)
    if "flip" not in recipe.techniques:
        out.not_mapped.append("no flip: the script always flips with p 0.5")
    if "input_norm" not in recipe.techniques:
        out.not_mapped.append("input normalisation: this project uses the training split's "
                              "per-channel mean/std, the script ImageNet's")
    out.not_mapped += ["seed: the script has no seed option",
                       "the script always trains on RandomResizedCrop crops (scale 0.08-1), "
                       "which this recipe does not use"]
    if not _is_torchvision_model(recipe.model):
        out.not_mapped.append(f"model {recipe.model}: not a torchvision model name (the script "
                              "builds torchvision.models.get_model(NAME)); pick one")
    return out


def _is_torchvision_model(name: str) -> bool:
    try:
        import torchvision
    except ImportError:
        return False
    return name in torchvision.models.list_models()


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------

def _header(title: list[str], recipe: Recipe, export: Export) -> list[str]:
    lines = [*title, *provenance_lines(recipe.provenance)]
    lines.append("lr: as trained (after any batch-size scaling); batch size: per GPU (the "
                 "recipe trained on one device)")
    for heading, items in (("Approximated (written, but not exactly what the recipe did):",
                            export.approximated),
                           ("Not mapped (no equivalent option, nothing written):",
                            export.not_mapped)):
        lines.append(heading + (" none" if not items else ""))
        lines += [f"  - {item}" for item in items]
    return [f"# {line}".rstrip() for line in lines]


def data_shape(recipe: Recipe) -> DataShape | None:
    """Image size, channels and classes of the recipe's data, or None where it is not here
    (the export then says which options to set by hand)."""
    from automl.data import load_data
    from automl.errors import UserError

    try:
        data = load_data(recipe.data)
    except UserError:
        return None
    return DataShape(data.image_size, data.in_chans, data.num_classes)


def export_text(recipe: Recipe, fmt: str) -> str:
    """``recipe`` as the text of format ``fmt``; the data is looked at only for other tools."""
    return render(recipe, fmt, None if fmt == "recipe" else data_shape(recipe))


def render(recipe: Recipe, fmt: str, shape: DataShape | None = None) -> str:
    """The text of ``recipe`` in format ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "recipe":
        return recipe.to_yaml()
    if fmt == "timm":
        export = timm_export(recipe, shape)
        title = ["args.yaml for timm's train.py (huggingface/pytorch-image-models):",
                 "  python train.py --config args.yaml --data-dir DIR [--dataset ...]"]
        return "\n".join(_header(title, recipe, export)) + "\n" + dump_yaml(
            {k: _plain(v) for k, v in export.options.items()})
    if fmt == "torchvision":
        export = torchvision_export(recipe, shape)
        title = ["Command line for torchvision's references/classification/train.py "
                 "(pytorch/vision):"]
        return "\n".join(_header(title, recipe, export)) + "\n" + _command(export.options)
    raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")


def _plain(value: Any) -> Any:
    """Floats rounded to 10 significant digits, so a file reads 0.1 rather than 0.1000000001."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.10g}")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _command(options: dict[str, Any]) -> str:
    parts = ["python train.py --data-path DIR"]
    for flag, value in options.items():
        if value is True:
            parts.append(flag)
        elif value is not False and value is not None:
            parts.append(f"{flag} {shlex.quote(str(_plain(value)))}")
    return " \\\n    ".join(parts) + "\n"
