"""Text in: reading calibration and evaluation text, and building calibration token batches.

Imports only the package root.
"""
