"""Command line: ``harness run | ls | show | report | compare | train``. ``main(argv) -> int``.

Only this module (and ``reports/``) prints. It knows no suite by name: ``run``'s suite flags,
its header, summary columns and extra tables come from the suites' declarations
(:mod:`harness.suites`); the checks before a run are :func:`harness.plan.plan_run`'s and the
run itself is :func:`harness.executor.execute`. torch and the model code are imported inside
the subcommands, so ``harness --help`` starts fast. Every user error -- a
:class:`HarnessError` or a bad argument -- is one line on stderr and exit status 2, with the
store untouched. ``$HARNESS_PLUGINS`` (comma-separated modules or .py files) is imported
first, so suites and models registered there appear in every command.

Examples::

    harness run --suite cifar10c                     # main job: default models, generated C
    harness run --suite cifar10c --data-dir ~/data   # released CIFAR-10-C files when present
    harness run --suite cifar10c --corruptions fog,snow --severities 3-5 --n 1000
    harness run --suite clean                        # bundled default models, bundled sample
    harness run --suite clean --model resnet8 --data-dir ~/data --n 10000
    harness run --suite clean --model my_models.py:build --weights net.safetensors
    harness run --suite cifar10c --help              # the suite's own options
    harness ls models 'resnet8*'
    harness show 3f2a --format csv --examples
    harness report --out site/                       # self-contained HTML pages
    harness compare resnet8 resnet8-gelu --format markdown --fail-on-drop 2
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


def build_parser(*, suite: str | None = None) -> argparse.ArgumentParser:
    """The argument parser. ``run`` gets one flag per option of every registered suite (each
    suite's in its own group), or only ``suite``'s when given (``harness run --suite S --help``)."""
    parser = _Parser(prog="harness", description="Robustness benchmarking harness for image "
                     "classifiers (CIFAR-10): every example's outcome under each suite goes to a "
                     "resumable store.")
    from harness.version import __version__

    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="evaluate models on a suite; results go to the store")
    run.add_argument("--suite", required=True, help="suite name (harness ls suites); with "
                     "--help, lists that suite's options only")
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
                     "condition; a suite may default to fewer on the bundled sample)")
    run.add_argument("--batch-size", type=_positive_int, default=250)
    run.add_argument("--shard-size", type=_positive_int, help="examples per stored shard")
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    run.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--store", default=None, help=STORE_HELP)
    run.add_argument("--force", action="store_true", help="recompute even if stored")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--executor", default="local", metavar="NAME",
                     help="local (this process; default) or ray (a Ray task per model and "
                          "shard; this process stays the store's only writer)")
    run.add_argument("--address", help="for --executor ray: an existing cluster ('auto', "
                     "'ray://HOST:10001'); default: start a local one for the run")
    _add_suite_options(run, suite)

    ls = sub.add_parser("ls", help="list models, suites, attacks, executors, stored runs or "
                        "RobustBench models")
    ls.add_argument("what", choices=("models", "suites", "attacks", "executors", "runs",
                                     "robustbench"))
    ls.add_argument("pattern", nargs="?", default="*", help="glob filter on names")
    ls.add_argument("--store", default=None, help=STORE_HELP)

    show = sub.add_parser("show", help="show a stored run (summary, per-example records or "
                          "metric records)")
    show.add_argument("run", help="run id or unique prefix (harness ls runs)")
    show.add_argument("--format", default="table", choices=("table", "csv", "json"))
    what = show.add_mutually_exclusive_group()
    what.add_argument("--examples", action="store_true", help="per-example rows, not the summary")
    what.add_argument("--metrics", action="store_true", help="metric records (per run, layer, "
                      "iteration...), not the summary")
    show.add_argument("--store", default=None, help=STORE_HELP)

    report = sub.add_parser("report", help="write the HTML site (leaderboard, one page per "
                            "model, findings, comparisons) from the store; nothing is recomputed")
    report.add_argument("--store", default=None, help=STORE_HELP)
    report.add_argument("--out", default="site", help="output folder (default ./site)")
    report.add_argument("--reference", help="model every other model is compared with on the "
                        "compare page (default resnet8 when stored, else the first model)")
    report.add_argument("--compare", nargs=2, action="append", metavar=("A", "B"), default=[],
                        help="also write a page comparing A with B (repeatable)")

    compare = sub.add_parser("compare", help="paired comparison of two models or runs: deltas on "
                             "the examples both evaluated, exact McNemar test, bootstrap CIs")
    compare.add_argument("a", help="baseline: run id (prefix), model name or checkpoint path")
    compare.add_argument("b", help="candidate: run id (prefix), model name or checkpoint path")
    compare.add_argument("--store", default=None, help=STORE_HELP + "; B is looked up here")
    compare.add_argument("--baseline-store", help="store where A is looked up (default --store)")
    compare.add_argument("--suite", action="append", default=None, metavar="SUITE",
                         help="compare only these suites (repeatable)")
    compare.add_argument("--format", default="table", choices=("table", "markdown", "json"))
    compare.add_argument("--metric", action="append", default=None, metavar="NAME",
                         help="metric --fail-on-drop watches, e.g. cifar10c:mean (repeatable; "
                              "default: each compared suite's headline accuracy)")
    compare.add_argument("--fail-on-drop", type=float, default=None, metavar="PP",
                         help="exit 1 when a watched metric drops by more than PP percentage "
                              "points and the drop is significant")
    compare.add_argument("--alpha", type=float, default=0.05, help="significance level "
                         "(default 0.05)")
    compare.add_argument("--resamples", type=_positive_int, default=2000,
                         help="bootstrap resamples (default 2000)")
    compare.add_argument("--seed", type=int, default=0, help="bootstrap/permutation seed")

    train = sub.add_parser("train", help="train a registered model with the project's recipe")
    train.add_argument("--model", required=True, help="registry name")
    train.add_argument("--out", required=True, help="checkpoint path without suffix")
    train.add_argument("--data-dir", help="folder with cifar-10-batches-py (or $HARNESS_DATA)")
    # Recipe options default to None: TrainRecipe (models.training) holds the one set of
    # defaults, the bundled models' (importing it here would import torch for --help).
    train.add_argument("--epochs", type=_positive_int, help="default: the recipe's")
    train.add_argument("--batch-size", type=_positive_int, help="default: the recipe's")
    train.add_argument("--lr", type=float, help="peak learning rate; default: the recipe's")
    train.add_argument("--seed", type=int, help="default: the recipe's")
    train.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    train.add_argument("--sugar", metavar="SURROGATE", help="train the model's ReLUs with this "
                       "SUGAR surrogate gradient (bsilu, nelu, ...); the result is a ReLU model")
    train.add_argument("--tv2", type=float, help="TV(2) weight for deep-spline activations "
                       "(default: the model's recipe)")
    train.add_argument("--logit-scale", type=float, help="the loss sees logits x this "
                       "(default: the model's recipe)")
    train.add_argument("--lipschitz-projection", action=argparse.BooleanOptionalAction,
                       default=None, help="project 1-Lip spline slopes after every step "
                       "(default: the model's recipe)")
    train.add_argument("--device", default="cpu")
    train.add_argument("--quiet", action="store_true")
    return parser


def _add_suite_options(run: argparse.ArgumentParser, only: str | None) -> None:
    """One flag per suite option, from the suites' declarations (harness.suites.Option).
    Values stay strings here; the suite converts and validates them (the same path as
    harness.evaluate's keywords). An option two suites share gets one flag."""
    from harness.suites import SUITES  # torch-free: suites import torch only when they run

    names = [SUITES.resolve(only)] if only in SUITES else SUITES.names()
    seen: set[str] = set()
    for name in names:
        opts = [o for o in SUITES.get(name).options if o.name not in seen]
        if not opts:
            continue
        group = run.add_argument_group(f"{name} options")
        for opt in opts:
            seen.add(opt.name)
            help_ = opt.help + (f" (default {opt.default})" if opt.default is not None else "")
            if opt.type is bool:
                group.add_argument(opt.flag, dest=f"opt_{opt.name}", default=None, help=help_,
                                   action=argparse.BooleanOptionalAction)
            else:
                metavar = opt.metavar or (None if opt.choices else opt.type.__name__.upper())
                group.add_argument(opt.flag, dest=f"opt_{opt.name}", default=None, help=help_,
                                   metavar=metavar, choices=list(opt.choices) or None)


def _suite_from_argv(argv: Sequence[str]) -> str | None:
    """The ``--suite`` value of a ``run ... --help`` command line, else None."""
    argv = list(argv)
    if not argv or argv[0] != "run" or not {"-h", "--help"} & set(argv):
        return None
    for i, arg in enumerate(argv):
        if arg == "--suite" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--suite="):
            return arg.split("=", 1)[1]
    return None


# -- subcommands ------------------------------------------------------------------------------------
def _console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console.width = 160  # pipes and CI logs: do not squeeze tables to 80 columns
    return console


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.2f}"   # NaN: not measured


def cmd_run(args) -> int:
    import time

    # Lazy (here and in the other commands): torch and the models load only when a command
    # needs them, so `harness --help` stays fast.
    from harness.executor import execute, make_executor
    from harness.plan import plan_run
    from harness.store import Store, check_writable

    started = time.perf_counter()
    options = {k[len("opt_"):]: v for k, v in vars(args).items() if k.startswith("opt_")}
    store_path = args.store or _default_store()
    check_writable(store_path)   # before minutes of model loading, not after
    executor = make_executor(args.executor, address=args.address)
    # Every check (suite, options, data, models, probes, the cluster) happens before the store
    # is opened: a bad input must not leave a new store behind.
    plan = plan_run(suite=args.suite, models=args.model or (), data_dir=args.data_dir, n=args.n,
                    seed=args.seed, device=args.device, dtype=args.dtype,
                    batch_size=args.batch_size, shard_size=args.shard_size, options=options,
                    weights=args.weights, weights_dir=args.weights_dir)
    references = plan.suite.references(store_path, plan)   # read-only, before any write
    err = _console(stderr=True)
    try:
        if hasattr(executor, "connect"):
            executor.connect()
        with Store(store_path) as store:
            outcomes = _execute_with_progress(plan, store, args, err, execute, executor)
    finally:
        if hasattr(executor, "close"):
            executor.close()
    wall = time.perf_counter() - started
    console = _console()
    header, table = _summary_table(plan, outcomes, wall)
    console.print(header, soft_wrap=True)
    console.print(table)
    for item in plan.suite.tables(outcomes, references):
        console.print(item if isinstance(item, str) else _rich_table(item))
    for o in outcomes:
        bad = int(o.summary["n_nonfinite"].sum()) if "n_nonfinite" in o.summary else 0
        if bad:
            console.print(f"warning: {o.spec.model} gave non-finite logits (NaN/Inf) on {bad} "
                          f"of {int(o.summary['n'].sum())} evaluations; counted wrong, stored "
                          f"with pred -1 (harness show {o.run_id[:12]} --examples)")
    return 0


def _summary_table(plan, outcomes, wall: float):
    from rich.table import Table

    suite, ctx = plan.suite, plan.ctx
    heads = [suite.headline(o.summary) for o in outcomes]
    keys = list(dict.fromkeys(k for h in heads for k in h))
    header = (f"suite {suite.name} | data {plan.data_name} | {suite.describe(plan.params)} | "
              f"seed {ctx.seed} | {ctx.dtype} on {ctx.device}")
    table = Table(caption=f"wall time {wall:.1f} s (input preparation "
                          f"{outcomes[0].extra.get('inputs_s', 0.0):.1f} s, shared by all models)")
    table.add_column("model")
    for k in keys:
        table.add_column(suite.label(k), justify="right")
    for col in ("new shards", "eval s", "run"):
        table.add_column(col, justify="right" if col != "run" else "left")
    for o, h in zip(outcomes, heads):
        table.add_row(o.spec.model, *[suite.format(k, h[k]) if k in h else "-" for k in keys],
                      f"{o.shards_computed}/{o.shards_total}", f"{o.wall_s:.1f}", o.run_id[:12])
    return header, table


def _rich_table(t):
    """A suite's :class:`harness.suites.Table` as a rich table."""
    from rich.table import Table

    table = Table(title=t.title, caption=t.caption or None)
    frame = t.frame
    for col in frame.columns:
        numeric = col in t.percent or frame[col].dtype.kind in "iuf"
        table.add_column(str(col), justify="right" if numeric else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*[_pct(v) if col in t.percent else str(v)
                        for col, v in zip(frame.columns, row)])
    return table


def _execute_with_progress(plan, store, args, err, execute, executor):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        console=err, disable=args.quiet, transient=False)
    tasks = {pm.name: progress.add_task(f"{pm.name} / {plan.suite.name}", total=None)
             for pm in plan.models}

    def on_plan(name: str, todo: int, stored: int) -> None:
        progress.update(tasks[name], total=todo + stored, completed=stored)

    with progress:
        return execute(plan, store, executor=executor, force=args.force, on_plan=on_plan,
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
    elif args.what == "attacks":
        from attacks import ATTACKS

        table = Table(title="attacks (--attacks NAME,...; also torchattacks:NAME for any "
                            "torchattacks attack)")
        table.add_column("name")
        table.add_column("description")
        for name in ATTACKS.names(args.pattern):
            table.add_row(name, ATTACKS.meta(name).get("description", ""))
        console.print(table)
    elif args.what in ("suites", "executors"):
        if args.what == "suites":
            from harness.suites import SUITES as registry
        else:
            from harness.executor import EXECUTORS as registry

        table = Table(title=args.what + (" (harness run --executor NAME)"
                                         if args.what == "executors" else ""))
        table.add_column("name")
        table.add_column("description")
        for name in registry.names(args.pattern):
            table.add_row(name, registry.meta(name).get("description", ""))
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
                heads.append(f"{suite.format(key, head[key])} ({suite.label(key).rstrip(' %')})"
                             if key else "-")
        table = Table(title=f"runs in {path}")
        for col in ("run", "model", "suite", "data", "n", "headline", "status", "started (UTC)"):
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
    from harness.suites import SUITES, raised_flags

    path = args.store or _default_store()
    with Store(path, readonly=True) as store:
        run = store.find_run(args.run)
        raised = raised_flags(store.metrics_frame([run["run_id"]]))
        details: list = []
        if args.examples:
            out = store.to_frame([run["run_id"]])
        elif args.metrics:
            out = store.metrics_frame([run["run_id"]])
        else:
            suite = SUITES.get(run["suite"])() if run["suite"] in SUITES else None
            out = (suite.summarize(store, run["run_id"]) if suite is not None
                   else store.condition_summary(run["run_id"]))
            if suite is not None:
                details = suite.details(out)
    if not (args.examples or args.metrics):
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
        for item in details:
            _console().print(item if isinstance(item, str) else _rich_table(item))
        for line in raised:
            _console().print(f"[bold red]FLAG[/] {line}")
    return 0


def cmd_report(args) -> int:
    from reports.build import build_site

    path = args.store or _default_store()
    site = build_site(path, args.out, reference=args.reference, pairs=args.compare)
    _console().print(f"wrote {len(site.pages)} pages ({site.bytes / 1e6:.1f} MB) to "
                     f"{site.out} in {site.seconds:.1f} s")
    return 0


def cmd_compare(args) -> int:
    from reports.compare import compare_cli

    text, status = compare_cli(args, default_store=_default_store())
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return status


def cmd_train(args) -> int:
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from harness.provenance import check_device
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


COMMANDS = {"run": cmd_run, "ls": cmd_ls, "show": cmd_show, "report": cmd_report,
            "compare": cmd_compare, "train": cmd_train}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and dispatch; returns the exit status (2 for user errors)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        from harness.plugins import load_plugins

        load_plugins()  # $HARNESS_PLUGINS: modules registering suites or models
        args = build_parser(suite=_suite_from_argv(argv)).parse_args(argv)
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
