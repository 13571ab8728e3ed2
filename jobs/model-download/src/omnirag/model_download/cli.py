"""``python -m omnirag.model_download [run] | validate | status | schema``.

``run`` (the default) downloads every model of the spec, or the one model named by ``--repo``.
stdout gets one summary line per model (``--json``: one JSON object); stderr gets the logs and, for
each model that failed, one line ``error: <name>: <reason>``. The exit code says why (see
:mod:`omnirag.model_download.errors`): 0 done, 2 bad spec or settings, 3 repo not found,
4 revision not found, 5 access denied, 6 no space, 7 network, 8 integrity, 9 busy, 130 interrupted.
With several models every one is attempted; the code is the first failure's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import ValidationError

from omnirag.core.logging import configure_logging
from omnirag.model_download import MARKER_NAME, marker
from omnirag.model_download.config import ModelDownloadSettings
from omnirag.model_download.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OK,
    DownloadError,
    InvalidRequest,
)
from omnirag.model_download.progress import human
from omnirag.model_download.spec import ModelRequest, ModelSpec, SpecFile, from_flags, load, resolve

if TYPE_CHECKING:
    from omnirag.model_download.job import Outcome

log = logging.getLogger("omnirag.model_download")

SINGLE_MODEL_FLAGS = ("name", "source", "revision", "dir", "allow", "ignore", "endpoint")


def render(o: Outcome) -> str:
    rev = (o.resolved_revision or "")[:12]
    what = f"{o.repo}@{o.revision}" + (f" ({rev})" if rev else "")
    if o.state == "up-to-date":
        asked = "the hub still serves it" if o.checked_hub else "marker present, hub not asked"
        return f"{o.name}: up to date: {what} at {o.dest} ({o.files} files, {human(o.total_bytes)}; {asked})"
    return (
        f"{o.name}: {o.state} {what} into {o.dest}: {o.files} files, {human(o.total_bytes)}, "
        f"{human(o.received_bytes)} received in {o.seconds:.1f}s"
    )


def _requests(args: argparse.Namespace, settings: ModelDownloadSettings) -> list[ModelRequest]:
    specs: list[ModelSpec]
    if args.repo:
        if args.spec:
            raise InvalidRequest("give --spec (a file of models) or --repo (one model), not both")
        specs = [
            from_flags(
                name=args.name,
                source=args.source,
                repo=args.repo,
                revision=args.revision,
                dir=args.dir,
                allow_patterns=args.allow or None,
                ignore_patterns=args.ignore or None,
                endpoint=args.endpoint,
            )
        ]
    else:
        stray = [f"--{f}" for f in SINGLE_MODEL_FLAGS if getattr(args, f, None)]
        if stray:
            raise InvalidRequest(f"{', '.join(stray)}: flags for one model; give --repo as well")
        path = args.spec or settings.spec
        if path is None:
            raise InvalidRequest(
                "nothing to download: give --repo (one model) or --spec / MODEL_DOWNLOAD_SPEC (a spec file)"
            )
        specs = load(path)
    requests = resolve(specs, settings)
    if args.only:
        names = {r.name for r in requests}
        unknown = [n for n in args.only if n not in names]
        if unknown:
            raise InvalidRequest(
                f"--only {', '.join(unknown)}: not in the spec (it has: {', '.join(sorted(names))})"
            )
        requests = [r for r in requests if r.name in args.only]
    return requests


def cmd_run(args: argparse.Namespace, settings: ModelDownloadSettings) -> int:
    from omnirag.model_download.job import download  # httpx and the rest only when downloading

    requests = _requests(args, settings)
    bar = args.progress if args.progress is not None else sys.stderr.isatty()
    code = EXIT_OK
    for req in requests:
        try:
            outcome = download(req, settings, bar=bar)
        except DownloadError as exc:
            print(f"error: {req.name}: {exc.message}", file=sys.stderr, flush=True)
            code = code or exc.exit_code
            continue
        except OSError as exc:
            # The disk or the directory, not the hub: permissions, a read-only mount, a vanished volume.
            print(f"error: {req.name}: {exc.strerror or exc}: {exc.filename or req.dest}", file=sys.stderr)
            code = code or EXIT_INTERNAL
            continue
        print(json.dumps(outcome.as_dict()) if args.json else render(outcome), flush=True)
    return code


def cmd_validate(args: argparse.Namespace, settings: ModelDownloadSettings) -> int:
    for req in _requests(args, settings):
        print(f"{req.name}: {req.source} {req.repo}@{req.revision} -> {req.dest} ({req.endpoint})")
    return EXIT_OK


def cmd_status(args: argparse.Namespace, settings: ModelDownloadSettings) -> int:
    rows: list[dict[str, Any]] = []
    for req in _requests(args, settings):
        m = marker.read(req.dest)
        if m is None:
            state = "absent"
        elif not m.matches(req):
            state = "other-request"
        elif m.missing(req.dest):
            state = "files-missing"
        else:
            state = "complete"
        rows.append(
            {
                "name": req.name,
                "state": state,
                "dest": str(req.dest),
                "marker": str(req.dest / MARKER_NAME),
                "resolved_revision": m.data.get("resolved_revision") if m else None,
                "completed_at": m.data.get("completed_at") if m else None,
            }
        )
    for row in rows:
        print(json.dumps(row) if args.json else f"{row['name']}: {row['state']} ({row['dest']})")
    return EXIT_OK if all(r["state"] == "complete" for r in rows) else 1


def cmd_schema(args: argparse.Namespace, settings: ModelDownloadSettings) -> int:
    print(json.dumps(SpecFile.model_json_schema(by_alias=True), indent=2))
    return EXIT_OK


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", type=Path, help="YAML/JSON file of models (default: MODEL_DOWNLOAD_SPEC)")
    p.add_argument("--only", action="append", metavar="NAME", help="only this model of the spec (repeatable)")
    p.add_argument("--root", type=Path, help="directory relative `dir`s are under (MODEL_DOWNLOAD_ROOT)")
    one = p.add_argument_group("one model from flags instead of a spec")
    one.add_argument("--repo", help="repository id, e.g. Qwen/Qwen2.5-7B-Instruct")
    one.add_argument("--source", help="huggingface (hf, the default) or modelscope (ms)")
    one.add_argument("--revision", help="branch, tag or commit (default main / master)")
    one.add_argument("--dir", help="destination, relative to the root or absolute (default: the repo id)")
    one.add_argument("--allow", action="append", metavar="GLOB", help="only files matching (repeatable)")
    one.add_argument("--ignore", action="append", metavar="GLOB", help="skip files matching (repeatable)")
    one.add_argument("--endpoint", help="hub or mirror base URL (default: HF_ENDPOINT / MODELSCOPE_ENDPOINT)")
    one.add_argument("--name", help="label in logs and output (default: the repo id)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m omnirag.model_download",
        description="Download model snapshots from Hugging Face or ModelScope: resumable, with a "
        "completion marker.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="download (the default command)")
    _model_flags(run)
    run.add_argument("--refresh", action="store_true", help="ask the hub even if the marker is complete")
    run.add_argument("--json", action="store_true", help="one JSON object per model on stdout")
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: when stderr is a terminal)",
    )
    validate = sub.add_parser("validate", help="check the spec or flags; no network")
    _model_flags(validate)
    status = sub.add_parser("status", help="which models are complete (marker present and files there)")
    _model_flags(status)
    status.add_argument("--json", action="store_true")
    sub.add_parser("schema", help="print the JSON schema of the spec file")
    return p


def _interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    # Read by huggingface_hub at import: no user-agent telemetry, which would also fetch
    # {HF_ENDPOINT}/api/agent-harnesses, a request to huggingface.co even when a mirror is configured.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv.insert(0, "run")
    args = parser().parse_args(argv)
    try:
        settings = ModelDownloadSettings()
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "settings"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        print(f"error: setting {where}: {msg}", file=sys.stderr)
        return EXIT_INVALID
    updates: dict[str, Any] = {}
    if getattr(args, "root", None):
        updates["root"] = args.root
    if getattr(args, "refresh", False):
        updates["refresh"] = True
    settings = settings.model_copy(update=updates)
    configure_logging("model-download", settings.log_level, settings.log_json)
    signal.signal(signal.SIGTERM, _interrupt)  # a deleted Job pod: stop like Ctrl-C, partial files kept
    commands = {"run": cmd_run, "validate": cmd_validate, "status": cmd_status, "schema": cmd_schema}
    try:
        return commands[args.command](args, settings)
    except DownloadError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; partial files are kept and the next run resumes them", file=sys.stderr)
        if threading.active_count() > 1:
            # A transfer thread may sit in a read for read_timeout seconds; what it wrote is on disk
            # already (the next run resumes from the file's length), so leave without joining it.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    except Exception as exc:
        log.exception("unexpected failure")
        print(f"error: internal: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
        return EXIT_INTERNAL
