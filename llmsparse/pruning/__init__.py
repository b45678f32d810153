"""Weight pruning of an in-memory model: the :func:`prune` API (:mod:`.api`), the layer-by-layer
pipeline (:mod:`.layerwise`), layer budgets (:mod:`.budgets`), passes after the mask
(:mod:`.passes`: least-squares reconstruction, quantization), accelerate offload (:mod:`.offload`)
and the report (:mod:`.report`). The methods themselves are in :mod:`llmsparse.methods`.

Imports the root, :mod:`llmsparse.core`, :mod:`llmsparse.data` and :mod:`llmsparse.methods`.
"""

from .api import PruneSettings, prune
from .report import MatrixReport, PruneReport

__all__ = ["MatrixReport", "PruneReport", "PruneSettings", "prune"]
