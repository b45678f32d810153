"""Activation sparsity methods, one module each, registered by name (see :mod:`llmsparse.activation.base`).

Every module of this package is imported with the package, so a new method is one new file.
"""

from __future__ import annotations

from ...registry import import_submodules

import_submodules(__name__, __path__)
