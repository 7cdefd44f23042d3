"""Suite ``clean``: top-1 accuracy on unperturbed images, stored per example.

Per example it records the predicted class, correctness and the cross-entropy loss, so any
re-aggregation or paired comparison between checkpoints needs no recompute. Everything it does
is the :class:`~harness.suites.Suite` default; it is the smallest complete suite.
"""

from __future__ import annotations

from harness.suites._base import SUITES, Suite


@SUITES.register("clean", description="clean top-1 accuracy, per example")
class CleanSuite(Suite):
    name = "clean"
