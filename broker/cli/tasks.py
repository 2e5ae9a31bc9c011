"""`errand task show|suspend|resume|complete|fail|cancel TASK_ID`: a task's lifecycle, as an
operator, through GET /tasks/{id} and POST /tasks/{id}/{action} (docs/agents.md)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from broker.cli.admin import add_admin_arguments, admin_request, operator_headers
from broker.cli.output import iso_utc, printable, table
from broker.domain.models import is_safe_id

MOVES = ("suspend", "resume", "complete", "fail", "cancel")


def _task_id(value: str) -> str:
    if not is_safe_id(value):
        raise argparse.ArgumentTypeError("not a valid task id")
    return value


def cmd_task(args: argparse.Namespace) -> int:
    if args.action == "show":
        body = admin_request(args, "GET", f"/tasks/{args.task}")
        if args.json:
            print(json.dumps(body, indent=2))
            return 0
        print(_describe(body))
        return 0
    body = admin_request(
        args, "POST", f"/tasks/{args.task}/{args.action}", extra_headers=operator_headers(args)
    )
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    if body.get("changed"):
        print(printable(f"task {body['task_id']}: {body['previous']} -> {body['state']}"))
    else:
        print(printable(f"task {body['task_id']}: already {body['state']} (nothing changed)"))
    return 0


def _describe(body: dict[str, Any]) -> str:
    labels = " ".join(f"{k}={v}" for k, v in sorted((body.get("labels") or {}).items()))
    lines = [
        f"task      {body.get('task_id')}",
        f"state     {body.get('state')}",
        f"owner     {body.get('owner')}",
        f"deadline  {iso_utc(body['deadline']) if body.get('deadline') else '-'}",
        f"labels    {labels or '-'}",
    ]
    grants = body.get("grants") or []
    rows = [
        [
            g["jti"],
            g["identity"],
            iso_utc(g["exp"]),
            " ".join(g["scopes"]),
            " ".join(g["audiences"]),
        ]
        for g in grants
    ]
    text = printable("\n".join(lines))
    text += "\n" + table(["JTI", "IDENTITY", "EXPIRES (UTC)", "SCOPE", "AUDIENCE"], rows)
    return text + f"\n{len(grants)} live grant(s)"


def register(sub: Any) -> None:
    s = sub.add_parser("task", help="show a task, or suspend, resume, complete, fail or cancel it")
    add_admin_arguments(s)
    s.add_argument("action", choices=("show", *MOVES), help="what to do")
    s.add_argument("task", type=_task_id, help="the task id")
    s.add_argument("--operator", help="who is asking (recorded); defaults to $USER")
    s.set_defaults(fn=cmd_task)
