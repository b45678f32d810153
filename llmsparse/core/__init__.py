"""Shared primitives, the ground every other layer stands on: model layout, masks, input statistics,
quantization grids, least-squares solvers, finite-number checks, the layer-sequential engine, CPU
facts and dtypes, memory, safetensors files, bitsandbytes weights.

Imports only the package root (errors, registry, settings).
"""
