"""Robustness benchmarking harness for image classifiers.

Importing ``harness`` is cheap (no torch); :func:`evaluate` and the submodules load lazily.

Example::

    import harness
    df = harness.evaluate(my_model, suite="clean", n=500)    # per-example results
    df["correct"].mean()
"""

from harness.errors import HarnessError

__version__ = "0.1.0"
__all__ = ["HarnessError", "__version__", "evaluate"]


def __getattr__(name: str):
    if name == "evaluate":
        from harness.api import evaluate

        return evaluate
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
