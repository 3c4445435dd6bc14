from __future__ import annotations

from typing import TYPE_CHECKING

from optuna.distributions import CategoricalDistribution, IntDistribution

from automl.hookspecs import hookimpl
from automl.technique import Technique

if TYPE_CHECKING:
    import torch

    from automl.data import ImageFiles, Split
    from automl.stages import StageContext

STAGE = "self_supervised_pretraining.backbone"


def pretext_images(context: StageContext) -> torch.Tensor | ImageFiles:
    """Every image the pretext task may train on: the labelled training split and, when the
    data has them, the unlabelled images (their labels unused). Never val or test: the stage
    is handed neither (automl.stages.stage_data)."""
    from automl.data.splits import concat

    split: Split = context.train_split
    if context.unlabelled is not None and len(context.unlabelled):
        split = concat(split, context.unlabelled)
    return split.images


def run_pretext(context: StageContext) -> dict:
    """The stage: a fresh model of the recipe's architecture trained on the pretext task; the
    artifact is its backbone's weights (no classifier, no pretext head). The framework forks
    torch's global random state around it, so seeding here changes nothing after it."""
    import timm
    import torch

    from .pretext import pretrain_rotation, pretrain_simclr

    recipe, data, device = context.recipe, context.data, context.device
    torch.manual_seed(recipe["seed"])
    model = timm.create_model(recipe["model"], num_classes=data.num_classes,
                              in_chans=data.in_chans)
    model.to(device=device, memory_format=torch.channels_last)
    generator = torch.Generator(device=device)
    generator.manual_seed(recipe["seed"])
    mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1) * 255
                 for v in (data.mean, data.std))

    def normalise(images: torch.Tensor) -> torch.Tensor:
        return ((images.float() - mean) / std).contiguous(memory_format=torch.channels_last)

    images = pretext_images(context)
    common = {"epochs": recipe["epochs"], "batch_size": recipe["batch_size"],
              "lr": recipe["lr"], "device": device, "generator": generator,
              "normalise": normalise}
    if recipe["pretext"] == "rotation":
        weights = pretrain_rotation(model, images, **common)
    else:
        weights = pretrain_simclr(model, images, temperature=recipe["temperature"], **common)
    return {"state_dict": weights, "pretext": recipe["pretext"], "images": len(images)}


class SelfSupervisedPretraining(Technique):
    """Self-supervised pretraining: a pretext stage without labels; training starts from it.

    The stage trains a fresh model of the recipe's architecture without labels, once per
    study for each (pretext, stage_epochs) the search tries, cached and shared by the trials:
    `rotation` turns each image by a random number of quarter turns and predicts it
    (Gidaris et al.); `simclr` pulls two augmented views of an image together and pushes
    the other images of the batch away (random resized crop, flip, brightness, contrast and
    saturation jitter; NT-Xent through a projection head, temperature 0.5). Adam, lr 1e-3
    with cosine decay, batches of 256 (`stage_settings`). The supervised model then starts
    from the stage's backbone through transfer_learning's loading, with a freshly
    initialised classifier. The stage never sees the validation or test images; it also
    trains on the unlabelled images when the data has them (`data.labelled_fraction` below
    1, or a folder's `unlabelled/`). A stage epoch costs about one (rotation) or two (simclr)
    supervised epochs over all those images.
    Helps: few labels and many unlabelled images of the same kind; short supervised budgets.
    Suggested: rotation, 2–4 stage epochs on a CPU budget (the space's range); on a GPU fix
    stage_epochs at tens of epochs, where simclr (hundreds of epochs and large batches in
    the paper) is the stronger method.
    Source: Gidaris et al., "Unsupervised Representation Learning by Predicting Image
    Rotations" (2018); Chen et al., "A Simple Framework for Contrastive Learning of Visual
    Representations" (SimCLR, 2020).
    """

    name = "self_supervised_pretraining"
    space = {"pretext": CategoricalDistribution(["rotation", "simclr"]),
             "stage_epochs": IntDistribution(1, 4)}
    defaults = {"pretext": "rotation", "stage_epochs": 2}
    limits = {"stage_epochs": (1, None)}
    conflicts = {"transfer_learning": "both choose the weights the model starts from"}
    stage_settings = {"batch_size": 256, "lr": 1e-3, "temperature": 0.5}

    def stages(self, recipe):
        from automl.stages import Stage

        plan = {"model": recipe.model, "seed": recipe.seed, "pretext": self.params["pretext"],
                "epochs": self.params["stage_epochs"], **self.stage_settings}
        if plan["pretext"] != "simclr":
            del plan["temperature"]  # rotation has none: equal stages share one artifact
        return [Stage(STAGE, plan, run_pretext)]

    @hookimpl
    def modify_model(self, state):  # after weight_init (tryfirst), before surgery (trylast)
        from .pretext import classifier_prefix
        from .transfer_learning import load_checkpoint

        path = self.stage_artifact_path(state, STAGE)
        head = classifier_prefix(state.model) + "."
        fresh = [name for name in state.model.state_dict() if name.startswith(head)]
        state.extras[self.name] = load_checkpoint(state, path, self.name, fresh=fresh)
