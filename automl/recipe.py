"""Recipe: every value fixed — what a search exports and ``automl train`` replays.

A plain value; reading one from a file is the space parser's job
(:func:`automl.space.load_recipe`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from automl.yamlio import dump_yaml

__all__ = ["Recipe"]


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

