"""`diagnose`: the command line. It only parses arguments and calls plain functions.

    diagnose --run runs/mamba_v2 [--run runs/vit_s] [--out PATH] [--format table|json] [--fail-on …]
    diagnose --run runs/sweep        (a `diagnose sweep` folder: the Remedies report)
    diagnose demo | models | train | compare | …    (diagnose --help lists them)

Each subcommand lives in a module with `add_arguments(parser)` and `main(args) -> int`; this
file wires them, and turns user mistakes into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module

from rich.console import Console
from rich.markup import escape

# name -> (module, one-line help). Modules are imported only when their command runs, so
# `diagnose --help` answers at once.
SUBCOMMANDS = {
    "demo": ("diagnostics.demo", "train VIT-S, MAMBA-S and MAMBA-V2 briefly on the bundled data and write reports/demo.html"),
    "models": ("diagnostics.commands", "list the registered backbones: parameters, tokens, scan backend"),
    "train": ("diagnostics.train", "the reference training harness, recording as it trains"),
    "compare": ("diagnostics.train", "train several backbones with the same settings and print the seed's table"),
    "sweep": ("diagnostics.sweep", "test the seed's remedies: a baseline, each remedy alone and the full recipe, ranked"),
    "bench": ("diagnostics.bench", "scan backends, cost vs resolution, recorder overhead, loading; writes reports/bench.html"),
    "maps": ("diagnostics.maps_cmd", "scan paths vs attention: hidden attention, rollout, attributions, ERF, scores"),
    "export": ("diagnostics.export", "write a run's tables as TensorBoard scalars and histograms (--tensorboard DIR)"),
}


class UserError(Exception):
    """A mistake in what the user asked for: reported in one line, exit status 2."""


def _user_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [UserError, ValueError, FileNotFoundError,
                                         NotADirectoryError, FileExistsError, PermissionError]
    try:
        from diagnostics.runfmt import RunFormatError
        types.append(RunFormatError)
    except ImportError:
        pass
    return tuple(types)


class _Parser(argparse.ArgumentParser):
    """argparse, with usage mistakes reported in one line (the usage is one `--help` away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="diagnose",
        description="mambascope: convergence diagnostics for Vision Mamba against ViT. "
                    "With --run, analyse recorded runs; otherwise run a subcommand.")
    p.add_argument("--run", dest="runs", action="append", metavar="PATH",
                   help="a run directory to analyse (repeat to compare runs side by side), "
                        "or a `diagnose sweep` folder alone: its remedies ranked")
    p.add_argument("--out", metavar="PATH", help="where to write the HTML report "
                   "(default reports/NAME.html; reports/sweep_NAME.html for a sweep)")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="findings as a terminal table, or as JSON on stdout and nothing else")
    p.add_argument("--fail-on", choices=("warning", "error"),
                   help="exit 1 when a finding at this severity or worse exists")
    p.add_argument("-v", "--verbose", action="store_true", help="log more, show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(_module=module, _name=name)
        # argument definitions are cheap to import; the heavy work is imported inside main()
        getattr(import_module(module), "add_arguments")(sp, name)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    # soft_wrap: an error stays on one line whatever the terminal width
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        if args.command:
            if args.runs:
                raise UserError("--run goes without a subcommand (diagnose --run PATH)")
            return int(getattr(import_module(args._module), "main")(args, args._name) or 0)
        if args.runs:
            from diagnostics.report import diagnose_runs
            return int(diagnose_runs(args.runs, out=args.out, fmt=args.format,
                                     fail_on=args.fail_on) or 0)
        parser.print_help()
        return 0
    except KeyboardInterrupt:
        err.print("diagnose: interrupted")
        return 130
    except _user_error_types() as e:
        if args.verbose:
            raise
        err.print(f"diagnose: error: {escape(_one_line(e))}")
        return 2
    except Exception as e:  # a bug of ours: still one line, the traceback on request
        if args.verbose:
            raise
        err.print(f"diagnose: internal error: {escape(type(e).__name__)}: {escape(_one_line(e))} "
                  "(run with --verbose for the traceback)")
        return 1


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
