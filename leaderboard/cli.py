"""``vqbench leaderboard build|serve``: write the static site from a results folder, or serve it locally."""

from __future__ import annotations

import argparse
import functools
import http.server
import time
from pathlib import Path

from vqbench.errors import UserError


def cmd_build(args: argparse.Namespace) -> int:
    from vqbench.leaderboard import build

    t0 = time.perf_counter()
    index = build.build_site(args.results, args.out, suite=args.suite)
    n_pages = sum(1 for _ in Path(args.out).rglob("*.html"))
    print(f"leaderboard written to {index} ({n_pages} pages in {time.perf_counter() - t0:.1f}s); "
          f"browse it with `vqbench leaderboard serve --out {args.out}` or open the file directly")
    return 0


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
        pass


def make_server(out: str | Path, port: int = 8000, bind: str = "127.0.0.1",
                quiet: bool = False) -> http.server.ThreadingHTTPServer:
    """A static file server for the built site (port 0 picks a free port)."""
    root = Path(out)
    if not (root / "index.html").is_file():
        raise UserError(f"no site in {root} (no index.html): build it first with "
                        f"`vqbench leaderboard build --results results --out {root}`")
    handler = _QuietHandler if quiet else http.server.SimpleHTTPRequestHandler
    try:
        return http.server.ThreadingHTTPServer((bind, port), functools.partial(handler, directory=str(root)))
    except OSError as exc:
        raise UserError(f"cannot listen on {bind}:{port} ({exc.strerror}): pass another --port") from None


def cmd_serve(args: argparse.Namespace) -> int:
    server = make_server(args.out, args.port, args.bind)
    host, port = server.server_address[:2]
    print(f"serving {args.out} at http://{host}:{port}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("leaderboard", parents=[common], help="build or serve the static leaderboard site")
    add_actions(p.add_subparsers(dest="leaderboard_command", required=True, metavar="ACTION"), common)


def add_actions(lsub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """The ``build`` and ``serve`` actions (under ``vqbench leaderboard`` and ``python -m leaderboard``)."""
    b = lsub.add_parser("build", parents=[common], help="results folder -> static site (index.html + pages)")
    b.add_argument("--results", default="results", help="results folder (the store; default: results)")
    b.add_argument("--out", default="site", help="site folder to write (replaced on rebuild; default: site)")
    b.add_argument("--suite", default=None, metavar="NAME",
                   help="only the runs of this suite (tag suite:NAME; 'adhoc' = untagged runs)")
    b.set_defaults(func=cmd_build)
    s = lsub.add_parser("serve", parents=[common], help="serve a built site on a local static web server")
    s.add_argument("--out", default="site", help="the built site folder (default: site)")
    s.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 = any free port)")
    s.add_argument("--bind", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    s.set_defaults(func=cmd_serve)
