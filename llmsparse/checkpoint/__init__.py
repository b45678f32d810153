"""Checkpoints on disk: loading models (:mod:`.load`), saving pruned ones with their card, recipe and
report (:mod:`.save`, :mod:`.card`), output directories that never lose data (:mod:`.outdir`),
pruning a checkpoint one layer at a time (:mod:`.stream`, :mod:`.resume`), recipes and Hub upload.

Imports the layers below it: the root, :mod:`llmsparse.core`, :mod:`llmsparse.data`,
:mod:`llmsparse.formats`, :mod:`llmsparse.runtime`, :mod:`llmsparse.pruning` and :mod:`llmsparse.activation`.
"""
