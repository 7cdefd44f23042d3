"""Command line: ``harness run | ls | show | train``. ``main(argv) -> int``.

Only this module (and ``reports/``) prints. torch and the model code are imported inside the
subcommands, so ``harness --help`` starts fast. Every user error -- a :class:`HarnessError`
or a bad argument -- is one line on stderr and exit status 2, with the store untouched.

Examples::

    harness run --suite cifar10c                     # main job: default models, generated C
    harness run --suite cifar10c --data-dir ~/data   # released CIFAR-10-C files when present
    harness run --suite cifar10c --corruptions fog,snow --severities 3-5 --n 1000
    harness run --suite clean                        # bundled default models, bundled sample
    harness run --suite clean --model resnet8 --data-dir ~/data --n 10000
    harness run --suite clean --model my_models.py:build --weights net.safetensors
    harness ls models 'resnet8*'
    harness show 3f2a --format csv --examples
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence

from harness.errors import HarnessError

STORE_HELP = "results database (default ./harness-results.sqlite)"


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage, so errors stay one line."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise HarnessError(f"{self.prog}: {message}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _default_store() -> str:
    return os.environ.get("HARNESS_STORE") or "harness-results.sqlite"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description="Robustness benchmarking harness for image "
                     "classifiers (CIFAR-10): clean and CIFAR-10-C accuracy; attacks, "
                     "Lipschitz and sparsity suites to come.")
    from harness import __version__

    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="evaluate models on a suite; results go to the store")
    run.add_argument("--suite", required=True, help="suite name (harness ls suites)")
    run.add_argument("--model", action="extend", nargs="+", default=None, metavar="MODEL",
                     help="registry name, pkg.module:factory or file.py:factory (repeatable); "
                          "default: the registry's default set")
    run.add_argument("--weights", help="weights for a single --model (.safetensors, .pt, or a "
                     "checkpoint .json from 'harness train')")
    run.add_argument("--weights-dir", help="for --model robustbench:NAME: folder in "
                     "RobustBench's layout, DIR/cifar10/<threat>/NAME.pt (default "
                     "$HARNESS_ROBUSTBENCH_DIR); nothing is downloaded")
    run.add_argument("--data-dir", help="folder with cifar-10-batches-py and/or CIFAR-10-C "
                     "(default $HARNESS_DATA, else the bundled 1,000-image test sample)")
    run.add_argument("--n", type=_positive_int, help="evaluate the first N examples (per "
                     "condition; cifar10c on the bundled sample defaults to 500)")
    run.add_argument("--batch-size", type=_positive_int, default=250)
    run.add_argument("--shard-size", type=_positive_int, help="examples per stored shard")
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    run.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--store", default=None, help=STORE_HELP)
    run.add_argument("--force", action="store_true", help="recompute even if stored")
    c10c = run.add_argument_group("cifar10c options")
    c10c.add_argument("--corruptions", help="comma-separated names, or benchmark (default: the "
                      "15), extra (the 4 extras), all")
    c10c.add_argument("--severities", help="e.g. 1,3-5 (default 1-5)")
    c10c.add_argument("--source", choices=("auto", "released", "generated"), help="released "
                      "CIFAR-10-C files (DIR/CIFAR-10-C/*.npy), generated corruptions, or auto "
                      "(default: released when present)")
    c10c.add_argument("--baseline", metavar="MODEL", help="print mCE / relative mCE against "
                      "this model's stored cifar10c run on the same data")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    ls = sub.add_parser("ls", help="list models, suites, stored runs or RobustBench models")
    ls.add_argument("what", choices=("models", "suites", "runs", "robustbench"))
    ls.add_argument("pattern", nargs="?", default="*", help="glob filter on names")
    ls.add_argument("--store", default=None, help=STORE_HELP)

    show = sub.add_parser("show", help="show a stored run (summary or per-example records)")
    show.add_argument("run", help="run id or unique prefix (harness ls runs)")
    show.add_argument("--format", default="table", choices=("table", "csv", "json"))
    show.add_argument("--examples", action="store_true", help="per-example rows, not the summary")
    show.add_argument("--store", default=None, help=STORE_HELP)

    train = sub.add_parser("train", help="train a registered model with the project's recipe")
    train.add_argument("--model", required=True, help="registry name")
    train.add_argument("--out", required=True, help="checkpoint path without suffix")
    train.add_argument("--data-dir", help="folder with cifar-10-batches-py (or $HARNESS_DATA)")
    # Recipe options default to None: TrainRecipe (models/train.py) holds the one set of defaults
    # (importing it here would import torch for --help).
    train.add_argument("--epochs", type=_positive_int, help="default: the recipe's (55)")
    train.add_argument("--batch-size", type=_positive_int, help="default: the recipe's (256)")
    train.add_argument("--lr", type=float, help="peak learning rate; default: the recipe's (0.6)")
    train.add_argument("--seed", type=int, help="default: the recipe's (0)")
    train.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    train.add_argument("--sugar", metavar="SURROGATE", help="train the model's ReLUs with this "
                       "SUGAR surrogate gradient (bsilu, nelu, ...); the result is a ReLU model")
    train.add_argument("--tv2", type=float, help="TV(2) weight for deep-spline activations "
                       "(default: the model's recipe, 1e-4 for deepspline models, else 0)")
    train.add_argument("--logit-scale", type=float, help="the loss sees logits x this "
                       "(default: the model's recipe, 16 for 1-Lipschitz models, else 1)")
    train.add_argument("--lipschitz-projection", action=argparse.BooleanOptionalAction,
                       default=None, help="project 1-Lip spline slopes after every step "
                       "(default: the model's recipe)")
    train.add_argument("--device", default="cpu")
    train.add_argument("--quiet", action="store_true")
    return parser


# -- subcommands ------------------------------------------------------------------------------------
def _console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console.width = 160  # pipes and CI logs: do not squeeze tables to 80 columns
    return console


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _suite_options(args) -> dict:
    return {"corruptions": args.corruptions, "severities": args.severities, "source": args.source}


def cmd_run(args) -> int:
    import time

    from harness.runner import check_device, default_models, prepare_model, resolve_model
    from harness.store import Store
    from harness.suites import SUITES

    started = time.perf_counter()
    suite_name = SUITES.resolve(args.suite)
    suite = SUITES.get(suite_name)()
    options = suite.check_options(_suite_options(args))
    refs = args.model or default_models()
    if args.weights and len(refs) != 1:
        raise HarnessError("--weights needs exactly one --model")
    if args.baseline and suite_name != "cifar10c":
        raise HarnessError("--baseline applies to suite 'cifar10c' only")
    device = check_device(args.device)
    data = suite.load_data(data_dir=args.data_dir, **options)
    if args.n is not None and args.n > len(data):
        raise HarnessError(f"--n {args.n} exceeds the {len(data)} examples of {data.name}")
    head = data.head(args.n if args.n is not None else suite.default_n(data))
    # Validate every option against the data (names, severities, released files) and probe
    # every model before the store is opened: a bad input must not leave a new store behind.
    params = suite.params(n=len(head), shard_size=args.shard_size, data=head, device=device,
                          **options)
    loaded = [resolve_model(ref, weights=args.weights, device=device,
                            weights_dir=args.weights_dir) for ref in refs]
    for lm in loaded:
        prepare_model(lm, head, device=device, dtype=args.dtype)
    store_path = args.store or _default_store()
    if args.baseline:  # read-only lookup first: a missing baseline must not create a store
        from harness.suites.cifar10c import find_baseline

        _, fp = suite.data_identity(head, params)
        with Store(store_path, readonly=True) as store:
            baseline_id = find_baseline(store, args.baseline, {
                "data_fingerprint": fp, "params": params, "seed": args.seed})
            baseline = suite.summarize(store, baseline_id)
    err = _console(stderr=True)
    with Store(store_path) as store:
        outcomes = _run_all(loaded, suite_name, data, store, args, device, options, err)
    wall = time.perf_counter() - started
    console = _console()
    header, table = _summary_table(outcomes, args, device, wall)
    console.print(header, soft_wrap=True)
    console.print(table)
    if suite_name == "cifar10c":
        console.print(_corruption_table(outcomes))
        if args.baseline:
            from harness.suites.cifar10c import mce

            for o in outcomes:
                m = mce(o.summary, baseline)
                rel = f", relative mCE {m['relative_mce']:.1f} %" if "relative_mce" in m else ""
                if m.get("relative_excluded"):
                    rel += f" (without {', '.join(m['relative_excluded'])}: baseline error not " \
                           "above its clean error)"
                console.print(f"{o.spec.model}: mCE {m['mce']:.1f} %{rel} (baseline "
                              f"{args.baseline}, run {baseline_id[:12]})")
    return 0


_HEADLINE_LABELS = {"accuracy": "accuracy %", "clean": "clean %", "mean": "C-10-C mean %",
                    "extras": "extras mean %"}


def _summary_table(outcomes, args, device, wall: float):
    from rich.table import Table

    first = outcomes[0]
    params = first.spec.params
    what = f"n = {params['n']} examples"
    if first.spec.suite == "cifar10c":
        what = (f"n = {params['n']} per set | {len(params['corruptions'])} corruptions x "
                f"{len(params['severities'])} severities | source {params['source']}")
    heads = [o.suite.headline(o.summary) for o in outcomes]
    keys = list(dict.fromkeys(k for h in heads for k in h))
    header = (f"suite {first.spec.suite} | data {first.spec.data} | {what} | seed {args.seed} | "
              f"{args.dtype} on {device}")
    table = Table(caption=f"wall time {wall:.1f} s (input preparation "
                          f"{first.extra.get('inputs_s', 0.0):.1f} s, shared by all models)")
    table.add_column("model")
    for k in keys:
        table.add_column(_HEADLINE_LABELS.get(k, f"{k} %"), justify="right")
    for col in ("new shards", "eval s", "run"):
        table.add_column(col, justify="right" if col != "run" else "left")
    for o, h in zip(outcomes, heads):
        table.add_row(o.spec.model, *[_pct(h[k]) if k in h else "-" for k in keys],
                      f"{o.shards_computed}/{o.shards_total}", f"{o.wall_s:.1f}", o.run_id[:12])
    return header, table


def _corruption_table(outcomes):
    from rich.table import Table

    from harness.corruptions import CORRUPTIONS
    from harness.suites.cifar10c import per_corruption

    per = [per_corruption(o.summary) for o in outcomes]
    names = list(dict.fromkeys(k for p in per for k in p))
    table = Table(title="accuracy % by corruption", caption="mean over severities; * extra, "
                  "not in the mean; ~ approximate generator")
    table.add_column("corruption")
    for o in outcomes:
        table.add_column(o.spec.model, justify="right")
    for name in names:
        meta = CORRUPTIONS.meta(name)
        mark = ("" if meta["benchmark"] else " *") + (
            " ~" if meta["approximate"] and outcomes[0].spec.params["source"] == "generated" else "")
        table.add_row(name + mark, *[_pct(p[name]) if name in p else "-" for p in per])
    return table


def _run_all(loaded, suite, data, store, args, device, options, err):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from harness.runner import run_suites

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        console=err, disable=args.quiet, transient=False)
    tasks = {lm.name: progress.add_task(f"{lm.name} / {suite}", total=None) for lm in loaded}

    def on_plan(name: str, todo: int, stored: int) -> None:
        progress.update(tasks[name], total=todo + stored, completed=stored)

    with progress:
        return run_suites(models=loaded, suite=suite, data=data, store=store, n=args.n,
                          seed=args.seed, device=device, dtype=args.dtype,
                          batch_size=args.batch_size, shard_size=args.shard_size,
                          force=args.force, options=options, on_plan=on_plan,
                          on_progress=lambda name, k: progress.advance(tasks[name], k))


def cmd_ls(args) -> int:
    from rich.table import Table

    console = _console()
    if args.what == "models":
        from models.zoo import MODELS

        table = Table(title="models")
        for col in ("name", "weights", "default", "description"):
            table.add_column(col)
        for name in MODELS.names(args.pattern):
            meta = MODELS.meta(name)
            table.add_row(name, "bundled" if meta.get("weights") else "-",
                          "yes" if meta.get("default") else "", meta.get("description", ""))
        console.print(table)
    elif args.what == "robustbench":
        import fnmatch

        from models.robustbench import list_robustbench

        table = Table(title="RobustBench CIFAR-10 models (--model robustbench:[THREAT/]NAME)")
        table.add_column("threat")
        table.add_column("name")
        for threat, names in list_robustbench().items():
            for name in names:
                if fnmatch.fnmatchcase(name, args.pattern):
                    table.add_row(threat, name)
        console.print(table)
    elif args.what == "suites":
        from harness.suites import SUITES

        table = Table(title="suites")
        table.add_column("name")
        table.add_column("description")
        for name in SUITES.names(args.pattern):
            table.add_row(name, SUITES.meta(name).get("description", ""))
        console.print(table)
    else:
        import fnmatch

        from harness.store import Store

        path = args.store or _default_store()
        from harness.suites import SUITES

        with Store(path, readonly=True) as store:
            runs = [r for r in store.runs() if fnmatch.fnmatchcase(r["model"], args.pattern)]
            heads = []
            for r in runs:  # each suite's headline number (cifar10c: the 15 x 5 mean)
                suite = SUITES.get(r["suite"])() if r["suite"] in SUITES and r["n"] else None
                head = suite.headline(suite.summarize(store, r["run_id"])) if suite else {}
                key = suite.primary if suite and suite.primary in head else None
                heads.append(f"{_pct(head[key])} ({_HEADLINE_LABELS.get(key, key).rstrip(' %')})"
                             if key else "-")
        table = Table(title=f"runs in {path}")
        for col in ("run", "model", "suite", "data", "n", "accuracy %", "status", "started (UTC)"):
            table.add_column(col)
        for r, head in zip(runs, heads):
            table.add_row(r["run_id"][:12], r["model"], r["suite"], r["spec"]["data"],
                          str(r["n"]), head, "complete" if r["complete"] else "partial",
                          r["started_utc"])
        console.print(table)
    return 0


def cmd_show(args) -> int:
    import json

    from harness.records import SCHEMA_VERSION
    from harness.store import Store
    from harness.suites import SUITES

    path = args.store or _default_store()
    with Store(path, readonly=True) as store:
        run = store.find_run(args.run)
        if args.examples:
            out = store.to_frame([run["run_id"]])
        else:
            suite = SUITES.get(run["suite"])() if run["suite"] in SUITES else None
            out = (suite.summarize(store, run["run_id"]) if suite is not None
                   else store.condition_summary(run["run_id"]))
    if not args.examples:
        out.insert(0, "model", run["model"])
        out.insert(1, "suite", run["suite"])
        out.insert(0, "run_id", run["run_id"])
    if args.format == "csv":
        sys.stdout.write(out.to_csv(index=False))
    elif args.format == "json":
        doc = {"run": {k: run[k] for k in ("run_id", "model", "suite", "spec", "sessions",
                                           "started_utc", "finished_utc", "complete")},
               "schema_version": SCHEMA_VERSION,
               "rows": json.loads(out.to_json(orient="records"))}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        from rich.table import Table

        table = Table(title=f"run {run['run_id']} ({run['model']} / {run['suite']}, "
                            f"data {run['spec']['data']}, seed {run['spec']['seed']})")
        for col in out.columns:
            table.add_column(str(col))
        for row in out.itertuples(index=False):
            table.add_row(*[_pct(v) if col == "accuracy" else str(v)
                            for col, v in zip(out.columns, row)])
        _console().print(table)
    return 0


def cmd_train(args) -> int:
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from harness.runner import check_device
    from models.activations.sugar import SURROGATES
    from models.training import recipe_for, train_and_save
    from models.zoo import MODELS

    name = MODELS.resolve(args.model)
    device = check_device(args.device)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise HarnessError(f"--out: directory {out_dir!r} does not exist")
    if not os.access(out_dir, os.W_OK):
        raise HarnessError(f"--out: directory {out_dir!r} is not writable")
    if args.sugar is not None and args.sugar.replace("-", "_") not in SURROGATES:
        raise HarnessError(f"--sugar: unknown surrogate {args.sugar!r}; one of "
                           f"{', '.join(sorted(SURROGATES))}")
    if args.tv2 is not None and not (math.isfinite(args.tv2) and args.tv2 >= 0):
        raise HarnessError(f"--tv2 must be a finite number >= 0, got {args.tv2}")
    if args.logit_scale is not None and not (math.isfinite(args.logit_scale)
                                             and args.logit_scale > 0):
        raise HarnessError(f"--logit-scale must be a finite number > 0, got {args.logit_scale}")
    recipe = recipe_for(
        name, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        bf16=False if args.fp32 else None,
        sugar=None if args.sugar is None else args.sugar.replace("-", "_"),
        tv2=args.tv2, logit_scale=args.logit_scale,
        lipschitz_projection=args.lipschitz_projection,
    )
    err = _console(stderr=True)
    progress = Progress(TextColumn(f"train {name}"), BarColumn(), TextColumn("{task.completed}/"
                        "{task.total} steps"), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), console=err, disable=args.quiet)
    task = progress.add_task("train", total=None)
    with progress:
        meta = train_and_save(
            model_name=name, out=args.out, data_dir=args.data_dir, recipe=recipe, device=device,
            log=progress.console.print,
            on_step=lambda step, total: progress.update(task, completed=step, total=total),
        )
    _console().print(f"{name}: test accuracy {_pct(meta['test']['accuracy'])} % after "
                     f"{meta['train_time_s'] / 60:.1f} min; wrote {args.out}.safetensors/.json/.md")
    return 0


COMMANDS = {"run": cmd_run, "ls": cmd_ls, "show": cmd_show, "train": cmd_train}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and dispatch; returns the exit status (2 for user errors)."""
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except HarnessError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message held
        print(f"harness: error: {message}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print("harness: interrupted; finished shards are stored, rerun to resume", file=sys.stderr)
        return 130
