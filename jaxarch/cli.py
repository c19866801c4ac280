"""The `jaxarch` command: list, run and tour the experiments; use a finished run (`generate`, `evaluate`);
benchmark the families; measure the chapter's claims (`report`)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
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
    from jaxarch.train.profile import parse_profile

    process_flags = (args.coordinator_address, args.num_processes, args.process_id)
    distributed = args.distributed or any(flag is not None for flag in process_flags)
    if distributed:
        from jaxarch.train.distributed import initialize

        initialize(*process_flags)
    config = override_config(experiments.get_config(args.name), args.overrides)
    validate_config(config)
    # config.name: the experiment's name, or an experiment file's stem.
    workdir = Path(args.workdir or Path("runs") / config.name)
    # --restart empties the directory inside the run, under its lock, so a live run's directory is never emptied.
    result = train_and_evaluate(config, workdir, progress=args.progress, restart=args.restart,
                                allow_config_change=args.allow_config_change,
                                profile=None if args.profile is None else parse_profile(args.profile))
    print(json.dumps(result))
    return 0


def _step_argument(text: str) -> str | int:
    if text in ("best", "latest"):
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not 'best', 'latest' or a step number")


def _cmd_generate(args: argparse.Namespace) -> int:
    from jaxarch import load_run

    run = load_run(args.run_dir, step=args.step)
    prompt = run.default_prompt() if args.prompt is None else args.prompt
    text = run.generate(prompt, args.num_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    print(prompt + text)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from jaxarch import load_run

    run = load_run(args.run_dir, step=args.step)
    metrics = run.evaluate(args.split)
    # The keys of `jaxarch run`'s final line ("validation_loss"), so the two lines compare field by field.
    print(json.dumps({"experiment": run.config.name, "run_dir": str(run.run_dir), "step": run.step,
                      **{key.replace("/", "_"): value for key, value in metrics.items()}}))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from jaxarch import experiments
    from jaxarch.train.sweep import DEFAULT_SEEDS, parse_grid, sweep

    grid, seeds = parse_grid(args.grid)
    if seeds is not None and args.seeds is not None:
        raise ValueError("sweep: both --seeds and seed=... given, expected one of them")
    if seeds is None:
        count = DEFAULT_SEEDS if args.seeds is None else args.seeds
        if count < 1:
            raise ValueError(f"sweep: --seeds is {count}, expected a positive integer")
        seeds = list(range(count))
    config = experiments.get_config(args.name)
    workdir = Path(args.workdir or Path("runs") / f"sweep-{config.name}")
    command = " ".join(["jaxarch sweep", args.name, *args.grid, *([f"--seeds {args.seeds}"] if args.seeds else [])])
    summary = sweep(config, grid, seeds, workdir, strategy=args.strategy,
                    members_per_group=args.members_per_group, progress=args.progress, command=command)
    print(json.dumps(summary))
    return 0


def _cmd_tour(args: argparse.Namespace) -> int:
    from jaxarch.tour import format_table, run_tour

    results = run_tour(Path(args.workdir), models=args.models, progress=args.progress, seeds=args.seeds)
    print(format_table(results))
    return 0


def _cmd_gradients(args: argparse.Namespace) -> int:
    from jaxarch.vanishing import run

    print(json.dumps(run(args.seq_len, Path(args.out))))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from jaxarch.report import FULL, QUICK, run_report
    from jaxarch.report.budgets import with_seeds
    from jaxarch.report.render import duration, verdict_lines

    command = "jaxarch report" + (" --quick" if args.quick else "") + (f" --seeds {args.seeds}" if args.seeds else "")
    report = run_report(Path(args.out), with_seeds(QUICK if args.quick else FULL, args.seeds), command=command,
                        progress=args.progress)
    print(verdict_lines(report.claims))
    print(f"report: {Path(args.out) / 'index.md'} and index.html ({duration(report.wall_seconds)})")
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


class _IntermixedParser(argparse.ArgumentParser):
    """A command's parser that takes its options and positionals (`key=value` pairs) in any order.

    argparse's default parse ends a `nargs="*"` positional at the first option, so `jaxarch run NAME --workdir W
    train.steps=200` would leave `train.steps=200` unrecognised. The top-level parser hands each command's
    arguments to its parser's `parse_known_args`; this one parses them with `parse_known_intermixed_args`
    (options first, then the positionals among what is left), which itself calls `parse_known_args` on some
    Python versions: the flag sends those calls to argparse's own parse.
    """

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxarch", description=__doc__)
    # Every command's parser takes options and `key=value` pairs in any order (`_IntermixedParser`).
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_IntermixedParser)

    sub.add_parser("list", help="print the experiments").set_defaults(func=_cmd_list)

    run = sub.add_parser(
        "run", help="run one experiment; the last stdout line is a JSON of final metrics",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status:\n"
               "  0         done (a finished work directory is evaluated again, adding no records)\n"
               "  1         an unexpected failure, or a checkpoint that could not be read for a passing reason\n"
               "            (an I/O error, out of memory): it is left in place; rerun\n"
               "  2         bad input or environment: config, text files, an unwritable or full disk, a config\n"
               "            change on resume without --allow-config-change, a work directory another run holds\n"
               "  3         a non-finite loss or gradient\n"
               "  143, 130  stopped by SIGTERM, SIGINT (128 + the signal) after finishing the step and writing a\n"
               "            checkpoint; the same command resumes. A second signal exits at once, same status.")
    run.add_argument("name", help="experiment name (see `jaxarch list`) or the path of an experiment file, a module "
                     "with get_config()")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    run.add_argument("--workdir", help="run directory (default runs/NAME, for a file runs/STEM); resumes from "
                     "its newest intact checkpoint")
    run.add_argument("--restart", action="store_true", help="delete the work directory's contents first (refused "
                     "while another run holds it)")
    run.add_argument("--allow-config-change", action="store_true",
                     help="resume although the config differs from the saved config.json; the changes and their "
                          "step are recorded in config_history.jsonl and metrics.jsonl")
    run.add_argument("--profile", metavar="START:COUNT",
                     help="write a jax.profiler trace of the COUNT steps after step START to RUN_DIR/profile "
                          "(TensorBoard's profile plugin or Perfetto; see docs/logging.md)")
    run.add_argument("--distributed", action="store_true",
                     help="join a multi-process run (jax.distributed); the processes are found from SLURM, Open MPI "
                          "or a Cloud TPU pod slice, or from the three flags below")
    run.add_argument("--coordinator-address", metavar="HOST:PORT", help="process 0's address (implies --distributed)")
    run.add_argument("--num-processes", type=int, help="processes in the run (implies --distributed)")
    run.add_argument("--process-id", type=int, help="this process, 0 to num_processes - 1 (implies --distributed)")
    run.set_defaults(func=_cmd_run)

    generate = sub.add_parser("generate", help="continue a prompt with a trained language-model run (charlm-gpt, "
                              "charlm-lstm, ...); prints the prompt and its continuation")
    generate.add_argument("run_dir", metavar="RUN_DIR",
                          help="the run's work directory (as given to `jaxarch run --workdir`)")
    generate.add_argument("--prompt", metavar="TEXT", help="the text to continue (default: the start of the run's "
                          "held-out text, or the config's sample.prompt when it sets one)")
    generate.add_argument("--num-tokens", type=int, metavar="N", help="tokens to generate (default: the config's "
                          "sample.num_tokens, else 200); a GPT goes on past its context by recomputing")
    generate.add_argument("--temperature", type=float, metavar="T", help="0 is greedy (default: the config's "
                          "sample.temperature, else 0.8)")
    generate.add_argument("--top-k", type=int, metavar="K",
                          help="sample among the k most likely tokens only (default: all)")
    generate.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (default 0)")
    generate.add_argument("--step", type=_step_argument, default="best", metavar="best|latest|N",
                          help="the checkpoint: best (default), latest or a step number")
    generate.set_defaults(func=_cmd_generate)

    evaluate = sub.add_parser("evaluate", help="evaluate a trained run's checkpoint; the last stdout line is a "
                              "JSON of its metrics, keyed as `jaxarch run`'s")
    evaluate.add_argument("run_dir", metavar="RUN_DIR",
                          help="the run's work directory (as given to `jaxarch run --workdir`)")
    evaluate.add_argument("--split", metavar="NAME",
                          help="one evaluation split (default: every split of the dataset)")
    evaluate.add_argument("--step", type=_step_argument, default="best", metavar="best|latest|N",
                          help="the checkpoint: best (default), latest or a step number")
    evaluate.set_defaults(func=_cmd_evaluate)

    sweep = sub.add_parser("sweep", help="run an experiment over a grid of overrides and several seeds; summarise "
                           "each grid point as mean, std and 95%% interval (DIR/summary.md, summary.json)")
    sweep.add_argument("name", help="experiment name (see `jaxarch list`) or the path of an experiment file")
    sweep.add_argument("grid", nargs="*", metavar="key=v1,v2", help="dotted config keys and the values to try; the "
                       "grid is their product (seed=0,1,2 lists the seeds)")
    sweep.add_argument("--seeds", type=int, help="seeds 0..N-1 per grid point (default 5)")
    sweep.add_argument("--workdir", help="sweep directory (default runs/sweep-NAME, for a file runs/sweep-STEM); a "
                       "member's run directory is DIR/<grid point>/seed=S; started again, finished members are "
                       "skipped, others resume")
    sweep.add_argument("--strategy", default="auto", choices=["auto", "vmap", "sequential"],
                       help="vmap: stack members into one jitted step; sequential: one after another; auto: vmap "
                            "on GPU/TPU, sequential on CPU")
    sweep.add_argument("--members-per-group", type=int, help="at most K members in one stacked step (vmap)")
    sweep.set_defaults(func=_cmd_sweep)

    tour = sub.add_parser("tour", help="train every MNIST-1D model and print a table beside published numbers")
    tour.add_argument("--workdir", default="runs/tour")
    tour.add_argument("--models", help="comma-separated experiments, a subset of the table's rows (default: all)")
    tour.add_argument("--seeds", type=int, default=1, help="seeds per model; above 1 the table shows mean +- std")
    tour.set_defaults(func=_cmd_tour)

    gradients = sub.add_parser("gradients", help="plot ||dLoss/dh_t|| over t for RNN, LSTM and GRU at init")
    gradients.add_argument("--seq-len", type=int, default=100)
    gradients.add_argument("--out", default="runs/gradients")
    gradients.set_defaults(func=_cmd_gradients)

    report = sub.add_parser("report", help="measure the chapter's claims and write DIR/index.md and index.html")
    report.add_argument("--quick", action="store_true", help="tiny budgets (minutes); verdicts may be inconclusive")
    report.add_argument("--out", default="runs/report", help="report directory (default runs/report)")
    report.add_argument("--seeds", type=int, help="seeds per training run (default: 3, at least 3; --quick: 1); "
                        "the checks judge the 95%% interval of the seeds' mean")
    report.set_defaults(func=_cmd_report)

    bench = sub.add_parser("bench", help="time each family's training step beside Flax and PyTorch; write JSON, "
                           "Markdown and plots")
    bench.add_argument("--quick", action="store_true", help="small sizes and few repetitions (under two minutes)")
    bench.add_argument("--families", default="conv,rnn,lstm,gru,attention,gpt,vit,resnet", help="comma-separated")
    bench.add_argument("--sizes", help="comma-separated, of small,reference,large (default: all; small with --quick)")
    bench.add_argument("--out", help="the JSON path (default benchmarks/results/bench_BACKEND.json); the Markdown "
                       "and PNGs go beside it")
    bench.add_argument("--torch", action=argparse.BooleanOptionalAction, default=None,
                       help="PyTorch peers (default: when torch is installed)")
    bench.add_argument("--scaling", action=argparse.BooleanOptionalAction, default=True,
                       help="the sequence-length and image-size curves")
    bench.set_defaults(func=_cmd_bench)

    for command in (run, sweep, tour, report):
        command.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                             help="show a progress bar (default: only on a terminal)")
    return parser


# Exit statuses besides 0: argparse's own usage errors are 2 as well. A run stopped by a signal exits with
# 128 + the signal's number (`jaxarch.train.signals.exit_status`): 143 for SIGTERM, 130 for SIGINT.
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_NON_FINITE = 3


def start_again_with_huge_pages(environ: dict[str, str] | None = None, execve=os.execve) -> None:
    """Replaces this process by the same command line started with glibc's heap huge-page tunable
    (jaxarch/host_allocator.py), which glibc reads only at start-up; returns where that would change nothing.

    Part of the host allocator settings, so `JAXARCH_HOST_ALLOCATOR=0` leaves the process as it is. The command
    restarts before it has read its arguments or started anything, so it runs once, under its own process id.
    """
    from jaxarch import host_allocator

    environ = os.environ if environ is None else environ
    if environ.get("JAXARCH_HOST_ALLOCATOR", "1") != "1" or not sys.executable or not sys.orig_argv:
        return
    changed = host_allocator.with_huge_pages(environ, host_allocator.glibc_version(host_allocator.glibc()),
                                             host_allocator.transparent_huge_pages())
    if changed is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        execve(sys.executable, sys.orig_argv, changed)


def main(argv: list[str] | None = None) -> int:
    from jaxarch.tuning import tune_cpu

    if argv is None:  # the command line itself, not a call from Python with its own arguments
        start_again_with_huge_pages()
    os.environ.setdefault("MPLBACKEND", "Agg")
    args = build_parser().parse_args(argv)
    try:
        # Before any command starts JAX's backends: every figure the command prints is measured with them.
        tune_cpu()
        return args.func(args)
    except KeyboardInterrupt:
        # Ctrl-C outside a run's own handling (while loading, or in another command): nothing to save.
        print("jaxarch: stopped by SIGINT", file=sys.stderr)
        return 128 + signal.SIGINT
    except ValueError as err:
        # Configuration and input errors are the user's to fix: show the message, not a traceback.
        print(f"jaxarch: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        # stdout closed by a reader such as `head`: quietly, and without a second error when Python flushes it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as err:
        # A file the run reads or writes outside the places that restate their errors (the disk filled up
        # between two writes, a file vanished): the file and the reason, not a traceback.
        where = f"{err.filename}: " if err.filename else ""
        print(f"jaxarch: error: {where}{err.strerror or err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as err:
        from jaxarch.train.checkpoint import CheckpointReadError  # Imported here: `list` never loads JAX.
        from jaxarch.train.nonfinite import NonFiniteError

        if isinstance(err, CheckpointReadError):
            print(f"jaxarch: error: {err}", file=sys.stderr)
            return EXIT_FAILURE
        if not isinstance(err, NonFiniteError):
            raise
        if err.__cause__ is not None:  # jax_debug_nans: the traceback shows where the NaN arose
            traceback.print_exception(err.__cause__, file=sys.stderr)
        print(f"jaxarch: error: {err}", file=sys.stderr)
        return EXIT_NON_FINITE
    except Exception as err:
        from jaxarch.train.signals import Interrupted

        if not isinstance(err, Interrupted):
            raise
        print(f"jaxarch: {err}", file=sys.stderr)
        return err.exit_status


if __name__ == "__main__":
    sys.exit(main())
