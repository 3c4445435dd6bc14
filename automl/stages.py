"""Stages: work a technique needs done once before the main training (train a teacher,
pretrain weights), cached so that every trial of a study reuses it.

A technique declares its stages (:meth:`automl.technique.Technique.stages`): each
:class:`Stage` has a name, its own recipe (what it trains: hashed) and a ``run`` function that
turns a :class:`StageContext` into an artifact, a dict of tensors and plain values. A hook asks
for the artifact with :func:`artifact` (or :func:`artifact_path`; a technique with
``self.stage_artifact(state, name)``): the first call builds it, every later one, in this
process or another, reads it back.

- The artifact lives in ``STAGE_DIR/<stage name>-<key>/artifact.pt``, ``key`` a hash of the
  stage's name and recipe, the training data (dataset, data settings, a fingerprint of the
  training images and labels, and of the unlabelled images) and the versions of the project,
  its libraries and every plugin. A search's ``STAGE_DIR`` is ``RUN_DIR/stages``;
  ``automl train``'s is ``OUT/stages``, and it also reuses one the recipe's own folder holds
  (``runs/STUDY/stages`` beside ``best_recipe.yaml``); without one (tests, library use) it is
  ``$AUTOML_STAGE_DIR`` or ``~/.cache/automl/stages``.
- One builder at a time: a process takes an exclusive ``flock`` on the folder's ``lock`` file,
  looks again, and only then builds; another process asking meanwhile waits, then reads.
- Written atomically (a temp file, fsync, ``os.replace``): a stage killed halfway leaves only a
  temp file, which is ignored, and the next request builds the stage again. An artifact that
  cannot be read back is built again too.
- A stage never sees the validation or test split: ``run`` receives the data with both empty
  (:func:`stage_data`), and :meth:`StageContext.train` trains with ``fit(validate=False)``.
- The time spent obtaining artifacts is added to ``state.extras["stage_seconds"]`` (by stage
  name): a search records it as the trial's ``stage_seconds``, apart from its ``seconds``, and
  stage epochs are not trial epochs, so the pruner never counts them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from automl.hookspecs import hookimpl

if TYPE_CHECKING:
    import pluggy
    import torch

    from automl.data import DataBundle, Split
    from automl.recipe import Recipe
    from automl.state import TrainState

__all__ = ["ARTIFACT", "STAGES_FOLDER", "STAGE_DIR_ENV", "STAGE_SECONDS", "Stage",
           "StageContext", "StageDirectory", "Trained", "artifact", "artifact_folder",
           "artifact_path", "default_stage_dir", "run_stage_dir", "split_fingerprint",
           "stage_data", "stage_dir_of", "stage_key"]

log = logging.getLogger("automl")

ARTIFACT = "artifact.pt"
LOCK = "lock"
DESCRIPTION = "stage.json"
#: Where stages are cached when nothing set a folder (tests, library use).
STAGE_DIR_ENV = "AUTOML_STAGE_DIR"
#: ``state.extras`` key: seconds this training spent obtaining each stage's artifact.
STAGE_SECONDS = "stage_seconds"
#: The folder of a run (a search's ``--out``, ``automl train``'s ``--out``) stages live in.
STAGES_FOLDER = "stages"


@dataclass(frozen=True)
class Stage:
    """Work done once before training, producing an artifact (a dict of tensors and plain
    values, readable with ``torch.load(weights_only=True)``).

    ``name`` is ``TECHNIQUE.WHAT`` (``distillation.teacher``). ``recipe`` describes everything
    the artifact depends on besides the data (a :class:`~automl.recipe.Recipe`, which
    :meth:`StageContext.train` trains, or a plain dict): it is hashed into the cache key, so
    two stages with equal recipes share one artifact. ``run(context)`` builds the artifact.
    """

    name: str
    recipe: Recipe | dict[str, Any]
    run: Callable[[StageContext], dict[str, Any]]

    def __post_init__(self) -> None:
        parts = self.name.split(".")
        if len(parts) < 2 or not all(p and p.replace("_", "").isalnum() for p in parts):
            raise ValueError(f"stage name {self.name!r}: expected TECHNIQUE.WHAT "
                             "(letters, digits and underscores)")


class Trained(NamedTuple):
    """What :meth:`StageContext.train` returns: the final state and the plugin manager it
    trained with (``automl.model_file.save_model`` takes both)."""

    state: TrainState
    pm: pluggy.PluginManager


@dataclass(frozen=True)
class StageContext:
    """What a stage's ``run`` may see: the labelled training split (and the unlabelled images
    when the data has them), the device, and the normal trainer. Never val or test."""

    stage: Stage
    data: DataBundle  # val and test are empty (stage_data)
    device: torch.device
    stage_dir: Path  # where nested stages are cached

    @property
    def recipe(self) -> Recipe | dict[str, Any]:
        return self.stage.recipe

    @property
    def train_split(self) -> Split:
        return self.data.train

    @property
    def unlabelled(self) -> Split | None:
        return getattr(self.data, "unlabelled", None)

    def train(self, recipe: Recipe | None = None, *, extra_plugins: Sequence[Any] = (),
              max_steps: int | None = None) -> Trained:
        """Train ``recipe`` (default: the stage's own) with the normal trainer on the stage's
        data, without evaluating any split."""
        from automl.discovery import training_manager
        from automl.recipe import Recipe
        from automl.trainer import fit, prepare

        recipe = self.stage.recipe if recipe is None else recipe
        if not isinstance(recipe, Recipe):
            raise TypeError(f"stage {self.stage.name}: train() needs a Recipe, got "
                            f"{type(recipe).__name__}")
        pm = training_manager(recipe, extra_plugins=[StageDirectory(self.stage_dir),
                                                     *extra_plugins])
        state = prepare(recipe, self.data, pm, self.device)
        fit(state, pm, validate=False, max_steps=max_steps)
        return Trained(state, pm)


class StageDirectory:
    """A plugin that tells a training where stages are cached: sets ``state.stage_dir`` (and
    the folders whose artifacts it may reuse) first thing. The trial loop and ``automl
    train`` register one; without it, :func:`default_stage_dir` is used."""

    def __init__(self, path: Path, reuse: Sequence[Path] = ()):
        self.path, self.reuse = Path(path), tuple(Path(p) for p in reuse)

    @hookimpl(tryfirst=True)
    def configure_training(self, state: TrainState) -> None:
        state.stage_dir = self.path
        if self.reuse:
            state.extras["stage_reuse"] = self.reuse


def run_stage_dir(run_dir: Path) -> Path:
    """Where a run folder keeps its stages."""
    return Path(run_dir) / STAGES_FOLDER


def default_stage_dir() -> Path:
    """``$AUTOML_STAGE_DIR``, else ``$XDG_CACHE_HOME/automl/stages`` (``~/.cache``)."""
    if os.environ.get(STAGE_DIR_ENV):
        return Path(os.environ[STAGE_DIR_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "automl" / "stages"


def artifact(state: TrainState, stage: Stage) -> dict[str, Any]:
    """The stage's artifact (on the CPU), built now if no process has built it yet."""
    from automl.checkpoints import read_checkpoint

    return read_checkpoint(artifact_path(state, stage))


def artifact_path(state: TrainState, stage: Stage) -> Path:
    """The file holding the stage's artifact, built now if no process has built it yet (a
    ``.pt`` file: ``automl.load_model`` reads a teacher's, ``load_weights`` pretrained
    weights). The seconds this took are added to ``state.extras["stage_seconds"]``."""
    started = time.perf_counter()
    try:
        return _obtain(state, stage)
    finally:
        spent = state.extras.setdefault(STAGE_SECONDS, {})
        spent[stage.name] = spent.get(stage.name, 0.0) + time.perf_counter() - started


def artifact_folder(state: TrainState, stage: Stage) -> Path:
    """The folder this training caches the stage's artifact in (whether built or not)."""
    return stage_dir_of(state) / _folder_name(stage, state)


def stage_dir_of(state: TrainState) -> Path:
    """``state.stage_dir``, or the default cache when nothing set one."""
    return Path(getattr(state, "stage_dir", None) or default_stage_dir())


def _folder_name(stage: Stage, state: TrainState) -> str:
    return f"{stage.name}-{stage_key(stage, state)[:20]}"


def _obtain(state: TrainState, stage: Stage) -> Path:
    stage_dir, folder_name = stage_dir_of(state), _folder_name(stage, state)
    for reuse in state.extras.get("stage_reuse", ()):
        if _readable(reuse / folder_name / ARTIFACT, remove=False):
            return reuse / folder_name / ARTIFACT
    folder = stage_dir / folder_name
    path = folder / ARTIFACT
    if _readable(path):
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / LOCK):
        if _readable(path):  # built by another process while this one waited
            return path
        log.info("stage %s: building %s", stage.name, path)
        context = StageContext(stage, stage_data(state.data), state.device, stage_dir)
        started = time.perf_counter()
        from automl.distributed import one_process

        with _own_random_state(state.device), one_process():  # as if the artifact had been
            record = stage.run(context)  # there (reproducible); one rank builds it, alone
        if not isinstance(record, dict):
            raise TypeError(f"stage {stage.name}: run() returned a {type(record).__name__}, "
                            "not a dict of tensors and plain values")
        _save_atomic(record, path)
        _describe(folder / DESCRIPTION, stage, state, time.perf_counter() - started)
    return path


def _own_random_state(device: torch.device):
    """Torch's global random state (and the device's) restored afterwards."""
    import torch

    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def _readable(path: Path, remove: bool = True) -> bool:
    """An artifact that is there and loads; one that does not (a disk that lost it) is
    removed (``remove``: in this training's own folder), to be built again."""
    if not path.is_file():
        return False
    from automl.checkpoints import read_checkpoint
    from automl.errors import ConfigError

    try:
        read_checkpoint(path)
    except ConfigError as exc:
        log.warning("stage artifact %s cannot be read (%s); building it again", path, exc)
        if remove:
            path.unlink(missing_ok=True)
        return False
    return True


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``: one builder per stage across processes (released
    by the kernel when a process dies, so a killed builder never blocks the next)."""
    import fcntl

    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _save_atomic(record: dict[str, Any], path: Path) -> None:
    """torch.save to a temp file, flushed to disk, then renamed: never a half-written file."""
    import torch

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _describe(path: Path, stage: Stage, state: TrainState, seconds: float) -> None:
    """``stage.json`` beside the artifact: what it was built from, for people."""
    from automl.yamlio import write_atomic

    record = {**_key_parts(stage, state), "seconds": round(seconds, 2),
              "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_atomic(path, json.dumps(record, indent=2, sort_keys=True, default=repr) + "\n")


# --- what a stage sees, and what its artifact depends on --------------------------------------


def stage_data(data: DataBundle) -> DataBundle:
    """``data`` with empty validation and test splits: all a stage is handed."""
    return dataclasses.replace(data, val=_empty(data), test=_empty(data))


def _empty(data: DataBundle) -> Split:
    import torch

    from automl.data import Split

    shape = (0, data.in_chans, data.image_size, data.image_size)
    return Split(torch.empty(shape, dtype=torch.uint8), torch.empty(0, dtype=torch.int64))


def stage_key(stage: Stage, state: TrainState) -> str:
    """The hash an artifact is cached under (hex sha256)."""
    text = json.dumps(_key_parts(stage, state), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def _key_parts(stage: Stage, state: TrainState) -> dict[str, Any]:
    from automl.data.settings import DATA_ACCESS_KEYS
    from automl.provenance import library_versions, plugin_versions

    data = state.data
    settings = {k: v for k, v in state.recipe.data.items() if k not in DATA_ACCESS_KEYS}
    return {"stage": stage.name, "recipe": _recipe_dict(stage.recipe),
            "data": {"dataset": data.name, "settings": settings,
                     "classes": list(data.class_names), "in_chans": data.in_chans,
                     "image_size": data.image_size, "train": split_fingerprint(data.train),
                     "unlabelled": split_fingerprint(getattr(data, "unlabelled", None))},
            "versions": {**library_versions(), "plugins": plugin_versions()}}


def _recipe_dict(recipe: Recipe | dict[str, Any]) -> dict[str, Any]:
    """A stage recipe as plain data: where files live and where it came from left out."""
    from automl.data.settings import DATA_ACCESS_KEYS
    from automl.recipe import Recipe

    if not isinstance(recipe, Recipe):
        return dict(recipe)
    plain = recipe.to_dict()
    plain.pop("provenance", None)
    plain["data"] = {k: v for k, v in plain["data"].items() if k not in DATA_ACCESS_KEYS}
    return plain


#: id(labels tensor) -> (a weak reference to it, its split's fingerprint): hashed once per
#: process, not once per trial.
_FINGERPRINTS: dict[int, tuple[weakref.ref, str]] = {}


def split_fingerprint(split: Split | None) -> str | None:
    """sha256 of a split's labels and images (an image folder's: its file names)."""
    if split is None:
        return None
    cached = _FINGERPRINTS.get(id(split.labels))
    if cached is not None and cached[0]() is split.labels:
        return cached[1]
    from automl.data import ImageFiles

    digest = hashlib.sha256()
    digest.update(split.labels.numpy().tobytes())
    if isinstance(split.images, ImageFiles):
        digest.update("\n".join(map(str, split.images.paths)).encode())
        digest.update(str(split.images.size).encode())
    else:
        digest.update(str(tuple(split.images.shape)).encode())
        digest.update(memoryview(split.images.numpy()).cast("B"))
    for key in [k for k, (ref, _) in _FINGERPRINTS.items() if ref() is None]:
        del _FINGERPRINTS[key]  # splits that are gone
    _FINGERPRINTS[id(split.labels)] = (weakref.ref(split.labels), digest.hexdigest())
    return digest.hexdigest()
