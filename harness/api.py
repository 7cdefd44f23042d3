"""The Python entry point: run any suite on any ``nn.Module``, no registry needed.

Example::

    import harness, torchvision
    net = MyNet().eval()                      # takes (N, 3, 32, 32) inputs in [0, 1]
    df = harness.evaluate(net, suite="clean", n=1000, store="results.sqlite")
    print(df["correct"].mean())
"""

from __future__ import annotations

import os

from harness.errors import HarnessError


def evaluate(
    model,
    *,
    suite: str,
    n: int | None = None,
    data_dir: str | os.PathLike | None = None,
    store: str | os.PathLike | None = None,
    device: str = "cpu",
    seed: int = 0,
    batch_size: int = 250,
    name: str | None = None,
    **options,
):
    """Evaluate ``model`` on ``suite`` and return its per-example results.

    Args:
        model: an ``nn.Module`` mapping (N, 3, 32, 32) inputs in [0, 1] to class logits.
            It is moved to ``device``, put in eval mode and channels_last.
        suite: suite name (``harness ls suites``).
        n: number of examples (first ``n`` of the split; all when None).
        data_dir: CIFAR-10 directory; default ``$HARNESS_DATA``, else the bundled sample.
        store: results database path; None keeps results in memory only. With a path, a
            repeated call with the same model weights resumes instead of recomputing.
        device: torch device string.
        seed: run seed.
        batch_size: evaluation batch size.
        name: label of the model in the store (default: its class name).
        **options: suite options, e.g. for ``cifar10c``: ``corruptions="fog,snow"``,
            ``severities="3-5"``, ``source="released" | "generated" | "auto"``.

    Returns:
        pandas.DataFrame, one row per (condition, example): run_id, model, suite, data, seed,
        shard_key, condition columns, example, label, pred, correct, loss.

    Raises:
        HarnessError: unknown suite or option, bad data directory, n out of range.
    """
    from torch import nn

    from harness.runner import LoadedModel, check_device, run_suite
    from harness.store import Store
    from harness.suites import SUITES

    if not isinstance(model, nn.Module):
        raise HarnessError(f"evaluate() needs a torch.nn.Module, got {type(model).__name__}")
    device = check_device(device)
    suite_obj = SUITES.get(suite)()
    options = suite_obj.check_options(options)
    data = suite_obj.load_data(data_dir=data_dir, **options)
    if n is not None and not 1 <= n <= len(data):
        raise HarnessError(f"n={n} is outside 1..{len(data)} for {data.name}")
    label = name or type(model).__name__
    loaded = LoadedModel(name=label, module=model.to(device).eval(),
                         identity={"python_class": f"{type(model).__module__}."
                                                   f"{type(model).__qualname__}"})
    with Store(":memory:" if store is None else store) as st:
        outcome = run_suite(model=loaded, suite=suite, data=data, store=st, n=n, seed=seed,
                            device=device, batch_size=batch_size, options=options)
        return st.to_frame([outcome.run_id])
