"""The Ray Jobs commands: ``submit`` (a job's study as a Ray Job on a cluster), ``status`` and ``logs``
(``attnsearch.ray_jobs`` does the work)."""

from __future__ import annotations

import argparse
import sys

from ..uris import RAY_DASHBOARD_ADDRESS
from ._common import add_resume_options, add_set_option

ADDRESS_HELP = f"Ray dashboard address (default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, or {RAY_DASHBOARD_ADDRESS})"


def cmd_submit(args) -> int:
    from ..ray_jobs import build_working_dir, connect, resolve_address, submit

    extra = []
    if args.resume is not None:
        extra += ["--resume", args.resume]
    if args.no_pareto:
        extra.append("--no-pareto")
    if args.dry_run:
        bundle = build_working_dir(args.job, args.set or (), args.dry_run, extra_args=extra)
        for line in bundle.warnings:
            print(f"warning: {line}", file=sys.stderr)
        files = sorted(str(p.relative_to(bundle.working_dir)) for p in bundle.working_dir.rglob("*") if p.is_file())
        print(f"working_dir {bundle.working_dir}: {', '.join(files)}")
        print(f"entrypoint  {bundle.entrypoint}")
        return 0
    submission_id = submit(args.job, args.set or (), address=args.address, submission_id=args.submission_id,
                           extra_args=extra)
    address, _ = resolve_address(args.address)
    print(f"submitted {submission_id} to {address}")
    if not args.follow:
        flag = f" --address {address}" if args.address else ""
        print(f"  attnsearch status {submission_id}{flag}\n  attnsearch logs {submission_id}{flag} --follow")
        return 0
    return _follow(connect(args.address), submission_id)


def _follow(client, submission_id: str) -> int:
    """``--follow``: the job's output until it ends; exit status 0 for a job that succeeded."""
    from ..ray_jobs import follow_logs

    try:
        status = follow_logs(client, submission_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job goes on (attnsearch status {submission_id})", file=sys.stderr)
        return 130
    print(f"\njob {submission_id}: {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def cmd_status(args) -> int:
    from ..ray_jobs import connect, format_job, format_jobs, job_info

    client = connect(args.address)
    if args.submission_id:
        print(format_job(job_info(client, args.submission_id)))
    else:
        jobs = client.list_jobs()
        print(format_jobs(jobs) if jobs else f"no jobs on the cluster at {client.get_address()}")
    return 0


def cmd_logs(args) -> int:
    from ..ray_jobs import connect, job_info

    client = connect(args.address)
    if args.follow:
        return _follow(client, args.submission_id)
    job_info(client, args.submission_id)
    print(client.get_job_logs(args.submission_id), end="")
    return 0


def add_submit(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("submit", help="run a job's study on a Ray cluster as a Ray Job (Jobs API)")
    sp.add_argument("job", help="job YAML file; it and its search-space file are uploaded, data is not")
    add_set_option(sp, "override a job key, passed on to `attnsearch run` on the cluster (repeatable)")
    sp.add_argument("--address", help=ADDRESS_HELP)
    sp.add_argument("--submission-id", help="the job's id on the cluster (default: one Ray makes up)")
    add_resume_options(sp, "continue the newest (or the named) study under the job's ray.storage_path")
    sp.add_argument("--follow", action="store_true", help="print the job's output until it ends")
    sp.add_argument("--dry-run", metavar="DIR",
                    help="write the working_dir into DIR and print the entrypoint; send nothing")
    sp.set_defaults(func=cmd_submit)


def add_status(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("status", help="list the cluster's Ray Jobs, or one job's status")
    sp.add_argument("submission_id", nargs="?", help="one job (default: all jobs)")
    sp.add_argument("--address", help=ADDRESS_HELP)
    sp.set_defaults(func=cmd_status)


def add_logs(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("logs", help="print (or --follow) the output of a Ray Job")
    sp.add_argument("submission_id")
    sp.add_argument("--address", help=ADDRESS_HELP)
    sp.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    sp.set_defaults(func=cmd_logs)
