"""Recovery after pruning (PERP): retrain norms, biases and masked low-rank adapters, keeping every pruned weight zero.

Needs peft (``pip install "llmsparse[recover]"``), imported when :func:`recover` runs. Sits above
:mod:`llmsparse.pruning` and below :mod:`llmsparse.checkpoint` (which saves what it returns).
"""

from .api import RecoverSettings, recover
from .report import RecoverReport

__all__ = ["RecoverReport", "RecoverSettings", "recover"]
