"""`cbam survey build | serve | tally`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cbam.cli.options import CSV, DATA, FORCE, JSON, SEED, SPLIT
from cbam.extras import require_extra
from cbam.outputs import check_output_file
from cbam.report import format_markdown_table, write_csv


def cmd_build(args: argparse.Namespace) -> int:
    require_extra("survey", "cbam survey")
    from cbam.survey.study import build_study

    study = build_study(
        Path(args.baseline), Path(args.cbam), Path(args.output), data=args.data, split=args.split,
        questions=args.questions, seed=args.seed,
    )  # fmt: skip
    print(f"{study.folder}: {len(study.questions)} questions; serve it with `cbam survey serve {study.folder}`")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    require_extra("survey", "cbam survey")
    import uvicorn

    from cbam.survey.app import create_app
    from cbam.survey.study import load_study

    app = create_app(load_study(Path(args.study)))
    print(f"survey of {args.study} at http://{args.host}:{args.port}/ (Ctrl-C stops it; votes are kept)")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_tally(args: argparse.Namespace) -> int:
    require_extra("survey", "cbam survey")
    from cbam.survey.store import VoteStore
    from cbam.survey.study import load_study
    from cbam.survey.tally import per_question_rows, table6_markdown, tally_votes

    if args.csv:
        check_output_file(args.csv, force=args.force)
    study = load_study(Path(args.study))
    votes = VoteStore(study.votes_path).votes() if study.votes_path.exists() else []
    tally = tally_votes(study, votes)
    header, rows = per_question_rows(tally)
    if args.csv:
        write_csv(args.csv, header, rows)
    if args.json:
        print(json.dumps(tally.to_dict(), indent=2))
        return 0
    print(f"## Table 6: user study ({study.folder})\n")
    print(table6_markdown(tally))
    print("\n### Each question\n")
    print(format_markdown_table(header, rows))
    return 0


def add_survey_commands(commands: argparse._SubParsersAction) -> None:
    """`cbam survey ...` under the main parser's commands."""
    survey = commands.add_parser("survey", help="the paper's user study (Table 6): build, serve and tally a survey")
    actions = survey.add_subparsers(dest="survey_command", required=True, metavar="ACTION")

    build = actions.add_parser("build", help="pick images both models classify correctly and write their regions")
    build.add_argument("--baseline", required=True, help="the baseline's checkpoint")
    build.add_argument("--cbam", required=True, help="the CBAM network's checkpoint")
    DATA.add(build, default_help="the one the checkpoints were trained on")
    SPLIT.add(build)
    build.add_argument("--questions", type=int, default=50, help="number of images (paper: 50)")
    SEED.add(build, help="picks the images (the sides are shuffled at random)")
    build.add_argument("--output", required=True, help="the study folder to create (must not exist or be empty)")
    build.set_defaults(func=cmd_build)

    serve = actions.add_parser("serve", help="serve the survey: one question per page, votes into STUDY/votes.sqlite")
    serve.add_argument("study", help="a folder written by `cbam survey build`")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(func=cmd_serve)

    tally = actions.add_parser("tally", help="Table 6 from the votes, beside the paper's")
    tally.add_argument("study", help="the study folder")
    JSON.add(tally, help="print the tally as JSON")
    CSV.add(tally, help="also write each question's counts to this CSV file")
    FORCE.add(tally, help="replace an existing --csv file")
    tally.set_defaults(func=cmd_tally)
