"""A trained model kept as one file: the weights plus what rebuilding and feeding it needs.

``automl train`` writes ``model.pt`` as a dict of tensors and plain values only, so it is read
with ``torch.load(weights_only=True)`` like every checkpoint here: loading runs no code from the
file. Its ``state_dict`` entry keeps it loadable by transfer_learning and
:func:`automl.checkpoints.load_weights`. The architecture is rebuilt by name from timm's
registry (the project's small ResNets included) with the recorded keyword arguments; the
techniques whose ``model_kwargs`` / ``build_model`` / ``modify_model`` hooks change what that
builds (group norm in place of batch norm, say) are recorded at save time and replayed through
the same hooks at load time. An ``eval_model`` hook that wraps the evaluated model in an
:class:`EvalWrapper` (test-time augmentation) is recorded too: the file keeps the wrapped
model's weights and :func:`load_model` replays that hook, so the loaded model predicts as the
run evaluated. :func:`load_model` itself imports no training code unless such a technique has
to be replayed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from automl.checkpoints import read_checkpoint
from automl.errors import UserError, exception_line
from automl.functional import resize

if TYPE_CHECKING:
    import pluggy
    from PIL import Image

    from automl.state import TrainState

__all__ = ["FORMAT", "FORMAT_VERSION", "EvalWrapper", "LoadedModel", "ModelInfo", "Preprocess",
           "load_model", "save_model"]

log = logging.getLogger("automl")

FORMAT = "automl-model"  # the ``format`` entry: tells this file from a bare state_dict
#: 2 adds ``eval_wrappers``; a file without any is still written as version 1, which older
#: readers load (they would silently drop a wrapper, so they must refuse a file with one).
FORMAT_VERSION = 2
MODEL_FILE = "model.pt"  # its name in a training run's folder
#: Images the saved preprocessing is checked on against the trainer's evaluation path.
CHECK_IMAGES = 64


@dataclass(frozen=True)
class ModelInfo:
    """What a model file records besides the weights (plain values, as stored)."""

    architecture: str  # timm model name
    model_kwargs: dict[str, Any]  # everything timm.create_model got: num_classes, in_chans, ...
    class_names: list[str]
    in_chans: int
    image_size: int  # the size images were stored at: inputs are brought to it first
    train_image_size: int  # resolution trained at (FixRes, progressive resizing: smaller)
    eval_image_size: int | None  # resolution evaluated at, when it differs (inference_resize)
    dataset: str
    rebuild: list[str]  # techniques whose model hooks are replayed to rebuild the model
    recipe: dict[str, Any]  # the recipe trained (Recipe.to_dict form)
    versions: dict[str, Any]  # automl-recipes, python, torch, timm, optuna, plugins
    metrics: dict[str, float]  # the training run's final metrics (test/acc1, ...)
    #: techniques whose eval_model hook wraps the model (outermost first), replayed at load
    eval_wrappers: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class Preprocess:
    """PIL images or uint8 tensors to the normalised, resized float batch the model expects.

    The trainer's evaluation, step by step: images at the stored size (another size or
    channel count is converted as the folder dataset reads files: PIL, grayscale or RGB,
    bilinear resize), normalised by the training split's mean and std (per channel, or per
    pixel with input_norm), then resized to the evaluation size when inference_resize set one.
    Accepts one PIL image, a list of them, or a uint8 tensor C×H×W or N×C×H×W; always returns
    an N×C×H×W float batch (N = 1 for one image) on ``device``.
    """

    def __init__(self, info: ModelInfo, mean: torch.Tensor, std: torch.Tensor,
                 device: torch.device | str = "cpu"):
        self.in_chans, self.image_size = info.in_chans, info.image_size
        self.eval_image_size = info.eval_image_size
        self.device = torch.device(device)
        # As the trainer: float32 [0, 1] statistics broadcast over a batch, times 255.
        self.mean, self.std = (_broadcastable(v.to(self.device, torch.float32)) * 255
                               for v in (mean, std))

    def __call__(self, images: Any) -> torch.Tensor:
        batch = self.to_uint8(images).to(self.device)
        x = ((batch.float() - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return resize(x, self.eval_image_size) if self.eval_image_size else x

    def to_uint8(self, images: Any) -> torch.Tensor:
        """The images as a uint8 N×C×H×W batch at the stored size and channel count."""
        if isinstance(images, torch.Tensor):
            return self._from_tensor(images)
        if isinstance(images, Sequence) and not isinstance(images, str | bytes):
            if not images:
                raise ValueError("no images to preprocess")
            return torch.cat([self.to_uint8(image) for image in images])
        if hasattr(images, "convert") and hasattr(images, "resize"):  # a PIL image
            return self._from_pil(images)
        raise TypeError(f"expected a PIL image or a uint8 tensor, got {type(images).__name__}")

    def _from_tensor(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"expected uint8 image tensors (0-255), got {images.dtype}")
        if images.dim() == 2:
            images = images.unsqueeze(0)
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4:
            raise ValueError(f"expected C×H×W or N×C×H×W images, got shape "
                             f"{tuple(images.shape)}")
        if images.shape[1:] == (self.in_chans, self.image_size, self.image_size):
            return images
        return torch.cat([self._from_pil(_to_pil(image)) for image in images.cpu()])

    def _from_pil(self, image: Image.Image) -> torch.Tensor:
        from PIL import Image

        mode = {1: "L", 3: "RGB"}.get(self.in_chans)
        if mode is None:
            raise ValueError(f"the model takes {self.in_chans}-channel images; only 1 (grayscale) "
                             "and 3 (RGB) can be converted from other images")
        converted = image.convert(mode)
        if converted.size != (self.image_size, self.image_size):
            converted = converted.resize((self.image_size, self.image_size),
                                         Image.Resampling.BILINEAR)
        array = torch.frombuffer(bytearray(converted.tobytes()), dtype=torch.uint8)
        return array.view(self.image_size, self.image_size, self.in_chans).permute(2, 0, 1)[None]


def _to_pil(image: torch.Tensor) -> Image.Image:
    from PIL import Image

    channels = image.shape[0]
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels)
    if mode is None:
        raise ValueError(f"cannot convert a {channels}-channel image")
    array = image.permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(array[..., 0] if channels == 1 else array, mode)


def _broadcastable(values: torch.Tensor) -> torch.Tensor:
    """Per-channel values (C) or a per-pixel map (C×H×W) as a 4-d tensor over a batch."""
    return values.view(1, -1, 1, 1) if values.dim() == 1 else values.unsqueeze(0)


class EvalWrapper(nn.Module):
    """A module an ``eval_model`` hook wraps around the model it evaluates (test-time
    augmentation). It holds no weights of its own: a model file keeps ``module``'s weights,
    records ``technique`` (the subclass sets it) and replays that technique's ``eval_model``
    hook at load, so the loaded model is wrapped as the evaluated one was."""

    technique: str = ""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


def _unwrapped(model: nn.Module) -> tuple[list[str], nn.Module]:
    """The techniques of ``model``'s :class:`EvalWrapper` layers (outermost first) and the
    model inside them."""
    wrappers = []
    while isinstance(model, EvalWrapper):
        wrappers.append(model.technique)
        model = model.module
    return wrappers, model


class LoadedModel(NamedTuple):
    """:func:`load_model`'s result: ``model, preprocess, info = load_model(path)``."""

    model: nn.Module
    preprocess: Preprocess
    info: ModelInfo


def load_model(path: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    """The model ``automl train`` saved at ``path``, in eval mode on ``device``, with its
    preprocessing (:class:`Preprocess`) and what the file records (:class:`ModelInfo`).

    ``model(preprocess(image)).argmax(1)`` gives class indices into ``info.class_names``.
    When the run evaluated through a wrapper (``info.eval_wrappers``: test-time augmentation)
    ``model`` is that wrapper again, the plain network its ``module``.
    ``path`` may be the run folder (its ``model.pt`` is read). A file that is not an
    ``automl train`` model, or that cannot be rebuilt, is a one-line UserError naming it.
    """
    path = Path(path)
    if path.is_dir() and (path / MODEL_FILE).is_file():
        path = path / MODEL_FILE
    record = read_checkpoint(path)
    info = _info(record, path)
    model = build_model(info, path)
    _check_structure(record["module_types"], model, path)
    try:
        model.load_state_dict(record["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"{path}: the weights do not fit the rebuilt {info.architecture}: "
                        f"{exception_line(exc)}") from None
    model = _wrapped_for_evaluation(model, info, path)
    model.eval().to(device=device, memory_format=torch.channels_last)
    preprocess = Preprocess(info, record["mean"], record["std"], device)
    return LoadedModel(model, preprocess, info)


def _info(record: object, path: Path) -> ModelInfo:
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise UserError(f"{path}: not a model file of `automl train` (no format: {FORMAT} "
                        "entry); a bare weights file loads through transfer_learning")
    if record.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path}: model file format {record['format_version']} is newer than "
                        f"this automl-recipes reads ({FORMAT_VERSION}); upgrade it")
    fields = {f.name for f in dataclasses.fields(ModelInfo)}
    return ModelInfo(**{k: v for k, v in record.items() if k in fields})


def build_model(info: ModelInfo, path: Path | str = "model file") -> nn.Module:
    """A fresh (untrained) model of the recorded architecture and arguments, the recorded
    techniques' model hooks replayed (load_model then checks its modules' types)."""
    import timm

    import automl.models  # noqa: F401  (registers the project's small networks in timm)

    try:
        if info.rebuild:
            model = _rebuilt_through_hooks(info)
        else:
            model = timm.create_model(info.architecture, **info.model_kwargs)
    except UserError as exc:
        raise UserError(f"{path}: cannot rebuild the model: {exc}") from None
    except Exception as exc:  # unknown architecture (a plugin not installed), bad kwargs
        raise UserError(f"{path}: cannot rebuild model {info.architecture!r}: "
                        f"{exception_line(exc)}") from None
    return model


def _rebuilt_through_hooks(info: ModelInfo) -> nn.Module:
    """build_model, then modify_model, of the techniques the file names (the core's default
    build_model is timm.create_model with the recorded arguments), as one process builds it
    (inside a data-parallel run too: rank 0 checking the file it saved)."""
    from automl.discovery import training_manager
    from automl.distributed import one_process
    from automl.recipe import Recipe

    recipe = Recipe.from_dict(info.recipe)
    recipe.techniques = {k: v for k, v in recipe.techniques.items() if k in info.rebuild}
    pm = training_manager(recipe)
    state = model_only_state(recipe, info)
    with one_process():
        state.model = pm.hook.build_model(state=state,
                                          kwargs=_factory_kwargs(info.model_kwargs))
        pm.hook.modify_model(state=state)
    return state.model


def _wrapped_for_evaluation(model: nn.Module, info: ModelInfo, path: Path) -> nn.Module:
    """``model`` wrapped again by the recorded techniques' ``eval_model`` hooks (only theirs
    registered, on a model-only state): the model the training run evaluated."""
    if not info.eval_wrappers:
        return model
    from automl.discovery import training_manager
    from automl.recipe import Recipe

    recipe = Recipe.from_dict(info.recipe)
    recipe.techniques = {k: v for k, v in recipe.techniques.items() if k in info.eval_wrappers}
    try:
        pm = training_manager(recipe)
    except UserError as exc:
        raise UserError(f"{path}: cannot wrap the model for evaluation: {exc}") from None
    state = model_only_state(recipe, info)
    state.model = model
    wrapped = pm.hook.eval_model(state=state)
    if _unwrapped(wrapped) != (info.eval_wrappers, model):
        raise UserError(f"{path}: the eval_model hooks of {', '.join(info.eval_wrappers)} did "
                        f"not wrap the model as recorded (got {_unwrapped(wrapped)[0]})")
    return wrapped


def _factory_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The recorded arguments less those build_model takes from the state itself."""
    return {k: v for k, v in kwargs.items() if k not in ("num_classes", "in_chans")}


def model_only_state(recipe, info: ModelInfo) -> TrainState:
    """A TrainState for replaying model hooks outside training: the recipe and the data's
    shape (classes, channels, size), no images, the CPU."""
    from automl.state import TrainState

    data = SimpleNamespace(name=info.dataset, num_classes=info.num_classes,
                           in_chans=info.in_chans, image_size=info.image_size,
                           class_names=info.class_names, train=None, val=None, test=None)
    return TrainState(recipe=recipe, data=data, device=torch.device("cpu"), epochs=recipe.epochs,
                      batch_size=int(recipe.data.get("batch_size", 1)), batches_per_epoch=1,
                      generator=torch.Generator(), train_image_size=info.train_image_size,
                      eval_image_size=info.eval_image_size)


def module_types(model: nn.Module) -> dict[str, str]:
    """Every submodule's class name by module name: what two models of the same structure
    share (the class's own module is left out: a library may move a class)."""
    return {name: type(m).__qualname__ for name, m in model.named_modules()}


def _check_structure(expected: dict[str, str], model: nn.Module, path: Path | str) -> None:
    """A UserError naming the first module whose class differs from the recorded one."""
    got = module_types(model)
    if got != expected:
        name = next(n for n in {**expected, **got} if expected.get(n) != got.get(n))
        raise UserError(f"{path}: the rebuilt model's module {name or '(root)'!r} is "
                        f"{got.get(name, 'missing')}, but it was trained as "
                        f"{expected.get(name, 'missing')}")


# --- saving (called by automl train, after training) --------------------------------------


def save_model(path: Path, state: TrainState, pm: pluggy.PluginManager, model: nn.Module,
               metrics: dict[str, float]) -> None:
    """Write ``model`` (the eval_model hook's, trained in ``state``) as a model file.

    Checks what it wrote: the model rebuilt from the file has the trained model's structure,
    and the preprocessing gives the trainer's evaluation inputs on a few validation images;
    a mismatch is logged as a warning (the weights are still saved). A model wrapped by
    :class:`EvalWrapper` layers is saved as the model inside them, the wrappers recorded.
    """
    from automl.trainer import model_kwargs

    wrappers, model = _unwrapped(model)
    data = state.data
    kwargs = {"num_classes": state.num_classes, "in_chans": state.in_chans,
              **model_kwargs(state, pm)}
    record = {
        "format": FORMAT, "format_version": FORMAT_VERSION if wrappers else 1,
        "architecture": state.recipe.model, "model_kwargs": kwargs,
        "class_names": list(data.class_names), "in_chans": state.in_chans,
        "image_size": state.image_size, "train_image_size": state.train_image_size,
        "eval_image_size": state.eval_image_size, "dataset": data.name,
        "rebuild": _techniques_changing_the_model(state, pm, kwargs),
        "recipe": state.recipe.to_dict(), "versions": _versions(),
        "metrics": dict(metrics), "module_types": module_types(model),
        "eval_wrappers": wrappers,
    }
    record = {**_plain(record), "mean": _stat_tensor(state.input_mean),
              "std": _stat_tensor(state.input_std),
              "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    torch.save(record, path)
    info = _info(record, path)
    _check_rebuild(info, model, path)
    _check_preprocessing(info, record, state, pm, path)


def _plain(value: Any) -> Any:
    """``value`` as the plain types ``weights_only`` loading accepts (a version string is a
    ``str`` subclass, a tuple a list); anything else is a bug, raised here, not at load."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    for plain in (bool, int, float, str):
        if isinstance(value, plain):
            return plain(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    raise TypeError(f"cannot store a {type(value).__name__} in a model file: {value!r}")


def _stat_tensor(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32).detach().cpu().clone()


def _techniques_changing_the_model(state: TrainState, pm: pluggy.PluginManager,
                                   kwargs: dict) -> list[str]:
    """The enabled techniques whose hooks change the modules timm builds: any that builds the
    model itself, and each modify_model that changes a module's type (probed one by one, in
    call order, on a fresh CPU model). Those that only change weights (an init, loaded
    weights) are left out: the saved weights replace theirs."""
    builders = [impl.plugin_name for impl in pm.hook.build_model.get_hookimpls()
                if impl.plugin_name != "core"]
    probe = dataclasses.replace(state, device=torch.device("cpu"), extras={})
    probe.model = pm.hook.build_model(state=probe, kwargs=_factory_kwargs(kwargs))
    changing = []
    for impl in reversed(pm.hook.modify_model.get_hookimpls()):  # pluggy calls last-first
        if impl.hookwrapper or impl.wrapper:
            continue  # a wrapper around the others: recorded only if it builds the model
        before = module_types(probe.model)
        impl.function(**{arg: probe for arg in impl.argnames})
        if module_types(probe.model) != before:
            changing.append(impl.plugin_name)
    return [name for name in state.recipe.techniques if name in builders or name in changing]


def _versions() -> dict[str, Any]:
    """automl-recipes, Python, torch, timm, Optuna, and each loaded plugin's distribution."""
    from automl.provenance import library_versions, plugin_versions

    return {**library_versions(), "plugins": plugin_versions()}


def _check_rebuild(info: ModelInfo, model: nn.Module, path: Path) -> None:
    """Warn now when load_model will refuse the file (a model no hook replay rebuilds)."""
    try:
        _check_structure(module_types(model), build_model(info, path), path)
    except UserError as exc:
        log.warning("%s; automl.load_model cannot load it (its weights still load through "
                    "transfer_learning)", exc)


@torch.no_grad()
def _check_preprocessing(info: ModelInfo, record: dict, state: TrainState,
                         pm: pluggy.PluginManager, path: Path) -> None:
    """Warn when the recorded preprocessing does not give the inputs the trainer evaluated
    on: an eval_batch hook that does more than resize (test-time augmentation, say)."""
    from automl.trainer import normalise_batch

    val = state.data.val
    images = val.images[:CHECK_IMAGES].to(state.device)
    state.images = normalise_batch(state, images)
    pm.hook.eval_batch(state=state)
    expected = state.images.float()
    got = Preprocess(info, record["mean"], record["std"], state.device)(images)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=0, atol=1e-5):
        hooks = [impl.plugin_name for impl in pm.hook.eval_batch.get_hookimpls()]
        log.warning("%s: its preprocessing differs from the evaluation inputs of the training "
                    "run (eval_batch hooks of %s); predictions of automl.load_model may differ "
                    "from the recorded test scores", path, ", ".join(hooks) or "no technique")
