"""The ``attnsearch`` command.

Exit status: 0 on success, 2 for bad input (``attnsearch.contract.InputError``: a message names the file, the key
and the fix; nothing is started), 1 for a failure while running.

One module per group of commands: ``_studies`` (``run``, ``sync``, ``retrain``), ``_inspect`` (``modules``,
``sites``, ``flops``), ``_prune`` (``prune``), ``_results`` (``pareto``, ``ui``, ``export``), ``_optuna``
(``importance``, ``dashboard``: the study's Optuna record), ``_ray_jobs`` (``submit``, ``status``, ``logs``), and
``_common`` (the job argument, ``--set``, ``--resume``, what the commands share). Each command imports the layers it
needs when it runs (the one package with function-level imports of attnsearch's own modules), so that ``attnsearch
--help`` or ``attnsearch status`` does not pay for torch, Ray or MLflow.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from ..contract import InputError
from . import _inspect, _optuna, _prune, _ray_jobs, _results, _studies
from ._common import redacted_output

__all__ = ["build_parser", "main"]

# the order of `attnsearch --help`
_COMMANDS = (
    _studies.add_run, _inspect.add_modules, _inspect.add_sites, _inspect.add_flops, _results.add_pareto,
    _studies.add_sync, _studies.add_retrain, _prune.add_prune, _optuna.add_importance, _results.add_ui,
    _optuna.add_dashboard, _results.add_export,
    _ray_jobs.add_submit, _ray_jobs.add_status, _ray_jobs.add_logs,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="attnsearch", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with redacted_output():  # no credentials of a URI in anything printed or logged, tracebacks included
        try:
            return args.func(args)
        except InputError as exc:
            print(f"attnsearch {args.command}: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted; continue with: attnsearch run JOB --resume", file=sys.stderr)
            return 130
        except BrokenPipeError:  # `attnsearch sites resnet50 | head`
            sys.stderr.close()
            return 0
        except Exception:  # noqa: BLE001 - a failure while running: its traceback, redacted (Python's own would not be)
            traceback.print_exc()
            print(f"attnsearch {args.command}: failed (the traceback above)", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
