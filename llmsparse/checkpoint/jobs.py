"""The settings of runs that write a checkpoint from a pruning: streamed pruning and ``llmsparse prune`` jobs.

:func:`llmsparse.prune` takes :class:`~llmsparse.pruning.api.PruneSettings`; pruning a checkpoint on
disk (:func:`llmsparse.checkpoint.stream.prune_checkpoint`) can also resume (:class:`StreamSettings`);
a prune job from the command line or a recipe also says whether to stream and whether to retrain
after pruning (:class:`PruneJob`, the ``prune`` recipe kind). Each entry point's parameters are exactly the settings it accepts.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..pruning.api import PruneSettings
from ..settings import setting


@dataclass
class StreamSettings(PruneSettings):
    """The settings of :func:`prune_checkpoint`: those of :func:`~llmsparse.pruning.api.prune`, plus ``resume``."""

    resume: bool = setting(False, "continue an interrupted --stream run into the same --output with the same arguments", recipe=False)


@dataclass
class PruneJob(StreamSettings):
    """The settings of ``llmsparse prune`` and of prune recipes: ``stream`` picks :func:`prune_checkpoint` over ``prune``."""

    stream: bool = setting(
        False,
        "read one decoder layer at a time from the safetensors checkpoint, prune it and write it to --output at once "
        "(for models bigger than memory; Python: prune_checkpoint)",
    )

    recover: str | None = setting(
        None,
        "then retrain (llmsparse recover) with this recover recipe before saving, in the same run; pruned weights stay zero "
        "(Python: recover(model, tok, **load_recipe(RECIPE, 'recover')) after prune)",
        metavar="RECIPE",
    )

    def recipe(self) -> dict:
        """The recipe keys; ``stream`` and ``recover`` only when set, so ``llmsparse.prune(model, tok, **load_recipe(path))`` runs an in-memory recipe."""
        recipe = super().recipe()
        for key in ("stream", "recover"):
            if not recipe[key]:
                del recipe[key]
        return recipe

    def pruning(self) -> PruneSettings:
        """The settings of an in-memory run (``resume`` and ``stream`` belong to :func:`prune_checkpoint`)."""
        return PruneSettings.of(vars(self))

    def streaming(self) -> StreamSettings:
        return StreamSettings.of(vars(self))
