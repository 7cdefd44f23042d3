"""The Python entry point: run any suite on any ``nn.Module``, no registry needed.

Example::

    import harness, torchvision
    net = MyNet().eval()                      # takes (N, 3, 32, 32) inputs in [0, 1]
    df = harness.evaluate(net, suite="clean", n=1000, store="results.sqlite")
    print(df["correct"].mean())
"""

from __future__ import annotations

import os


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
    executor: str = "local",
    address: str | None = None,
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
        executor: ``"local"`` (this process) or ``"ray"`` (a Ray task per shard; the records
            are the same).
        address: for ``executor="ray"``: an existing cluster (``"auto"``, ``"HOST:PORT"``);
            default: the Ray already initialised in this process, else a local one.
        **options: the suite's options (``harness run --suite S --help`` lists them), e.g. for
            ``cifar10c``: ``corruptions="fog,snow"``, ``severities="3-5"``,
            ``source="released" | "generated" | "auto"``.

    Returns:
        pandas.DataFrame, one row per (condition, example): run_id, model, suite, data, seed,
        shard_key, condition columns, example, label, pred, correct, loss, and the suite's
        declared per-example fields. Metric records: ``Store(store).metrics_frame()``.

    Raises:
        HarnessError: unknown suite or option, bad data directory, n out of range.
    """
    # Lazy: `import harness` stays cheap (no torch) until evaluate() is called.
    from harness.executor import execute, make_executor
    from harness.plan import plan_run
    from harness.resolve import wrap_module
    from harness.store import Store

    runner = make_executor(executor, address=address)
    plan = plan_run(suite=suite, models=[wrap_module(model, name=name)], data_dir=data_dir,
                    n=n, seed=seed, device=device, batch_size=batch_size, options=options)
    with Store(":memory:" if store is None else store) as st:
        (outcome,) = execute(plan, st, executor=runner)
        return st.to_frame([outcome.run_id])
