"""Command line of the unsupervised training steps that ``harness train`` does not cover.

    python -m models.training dictionary --data-dir DATA --out models/weights/lca-dictionary
"""

from __future__ import annotations

import argparse
import sys

from harness.errors import HarnessError
from models.training.dictionary import learn_and_save_dictionary
from models.zoo import DICTIONARY_STEM


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.training")
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dictionary", help="learn the LCA dictionary (unsupervised)")
    d.add_argument("--data-dir")
    d.add_argument("--out", default=str(DICTIONARY_STEM))
    d.add_argument("--steps", type=int, default=300)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    try:
        learn_and_save_dictionary(out=args.out, data_dir=args.data_dir, steps=args.steps,
                                  seed=args.seed, device=args.device, log=print)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
