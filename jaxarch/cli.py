"""The `jaxarch` command: list, run and tour the experiments; benchmark the families."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path


def _cmd_list(args: argparse.Namespace) -> int:
    from jaxarch import experiments

    for name in experiments.names():
        print(f"{name:<24} {experiments.summary(name)}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from jaxarch import experiments
    from jaxarch.train import train_and_evaluate, validate_config
    from jaxarch.train.configure import override_config

    config = override_config(experiments.get_config(args.name), args.overrides)
    validate_config(config)
    workdir = Path(args.workdir or Path("runs") / args.name)
    if args.restart and workdir.exists():
        shutil.rmtree(workdir)
    result = train_and_evaluate(config, workdir, progress=args.progress)
    print(json.dumps(result))
    return 0


def _cmd_tour(args: argparse.Namespace) -> int:
    from jaxarch.tour import format_table, run_tour

    results = run_tour(Path(args.workdir), progress=args.progress)
    print(format_table(results))
    return 0


def _cmd_gradients(args: argparse.Namespace) -> int:
    from jaxarch.vanishing import run

    print(json.dumps(run(args.seq_len, Path(args.out))))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from jaxarch.benchmarks.report import markdown
    from jaxarch.benchmarks.suite import run_and_write

    families = [name.strip() for name in args.families.split(",") if name.strip()]
    sizes = None if args.sizes is None else [name.strip() for name in args.sizes.split(",") if name.strip()]
    result = run_and_write(args.out, families=families, quick=args.quick, sizes=sizes, include_torch=args.torch,
                           include_scaling=args.scaling)
    print(markdown(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxarch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="print the experiments").set_defaults(func=_cmd_list)

    run = sub.add_parser("run", help="run one experiment; the last stdout line is a JSON of final metrics")
    run.add_argument("name", help="experiment name, see `jaxarch list`")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    run.add_argument("--workdir", help="run directory (default runs/NAME); resumes from its checkpoints")
    run.add_argument("--restart", action="store_true", help="delete the work directory's contents first")
    run.set_defaults(func=_cmd_run)

    tour = sub.add_parser("tour", help="train every MNIST-1D model and print a table beside published numbers")
    tour.add_argument("--workdir", default="runs/tour")
    tour.set_defaults(func=_cmd_tour)

    gradients = sub.add_parser("gradients", help="plot ||dLoss/dh_t|| over t for RNN, LSTM and GRU at init")
    gradients.add_argument("--seq-len", type=int, default=100)
    gradients.add_argument("--out", default="runs/gradients")
    gradients.set_defaults(func=_cmd_gradients)

    bench = sub.add_parser("bench", help="time each family's training step beside Flax and PyTorch; write JSON, "
                           "Markdown and plots")
    bench.add_argument("--quick", action="store_true", help="small sizes and few repetitions (under two minutes)")
    bench.add_argument("--families", default="conv,rnn,lstm,gru,attention,gpt,vit", help="comma-separated")
    bench.add_argument("--sizes", help="comma-separated, of small,reference,large (default: all; small with --quick)")
    bench.add_argument("--out", help="the JSON path (default benchmarks/results/bench_BACKEND.json); the Markdown "
                       "and PNGs go beside it")
    bench.add_argument("--torch", action=argparse.BooleanOptionalAction, default=None,
                       help="PyTorch peers (default: when torch is installed)")
    bench.add_argument("--scaling", action=argparse.BooleanOptionalAction, default=True,
                       help="the sequence-length and image-size curves")
    bench.set_defaults(func=_cmd_bench)

    for command in (run, tour):
        command.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                             help="show a progress bar (default: only on a terminal)")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        # Configuration and input errors are the user's to fix: show the message, not a traceback.
        print(f"jaxarch: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
