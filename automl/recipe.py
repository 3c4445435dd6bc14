"""Recipe: every value fixed — what a search exports and ``automl train`` replays."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from automl.errors import ConfigError
from automl.space import SearchSpace, load_space
from automl.technique import Technique
from automl.yamlio import dump_yaml

__all__ = ["Recipe", "load_recipe", "recipe_from_space"]


@dataclass
class Recipe:
    """A model, data settings, an epoch budget and the enabled techniques with their values."""

    model: str
    data: dict[str, Any]
    epochs: int
    seed: int = 0
    techniques: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Where the recipe came from (:mod:`automl.provenance`); a record that never affects
    #: training, kept when the recipe is written again.
    provenance: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The YAML shape of a space with every value fixed (enabled techniques only)."""
        data = {
            "model": self.model,
            "data": dict(self.data),
            "epochs": self.epochs,
            "seed": self.seed,
            "techniques": {name: {"enabled": True, **params}
                           for name, params in self.techniques.items()},
        }
        if self.provenance:
            data["provenance"] = self.provenance
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Inverse of :meth:`to_dict` for trusted input (a study's stored recipe)."""
        techniques = {name: {k: v for k, v in params.items() if k != "enabled"}
                      for name, params in data.get("techniques", {}).items()
                      if params.get("enabled", True)}
        return cls(model=data["model"], data=dict(data["data"]), epochs=data["epochs"],
                   seed=data.get("seed", 0), techniques=techniques,
                   provenance=data.get("provenance"))

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())


def recipe_from_space(space: SearchSpace) -> Recipe:
    """The recipe a fully fixed space describes; an error names the first free value."""
    free = space.free_keys()
    if free:
        raise ConfigError(f"a recipe must fix every value, but {free[0]} is searched "
                          f"({len(free)} free value(s); fix them or set enabled: true/false)",
                          file=space.source)
    techniques = {t.name: dict(t.params) for t in space.techniques.values() if t.enabled}
    return Recipe(model=space.model, data=dict(space.data), epochs=space.epochs,
                  seed=space.seed, techniques=techniques, provenance=space.provenance)


def load_recipe(path: str | Path, catalog: dict[str, type[Technique]]) -> Recipe:
    """Read, validate and return a recipe file."""
    return recipe_from_space(load_space(path, catalog))
