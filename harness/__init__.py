"""Robustness benchmarking harness for image classifiers.

Importing ``harness`` is cheap (no torch): :func:`evaluate` imports what it needs when called.

Example::

    import harness
    df = harness.evaluate(my_model, suite="clean", n=500)    # per-example results
    df["correct"].mean()
"""

from harness.api import evaluate
from harness.errors import HarnessError
from harness.version import __version__

__all__ = ["HarnessError", "__version__", "evaluate"]
