"""``python -m tests.cluster up|down|status``.

``up`` prints the admin kubeconfig path as its last line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys

from . import harness, kueue, storage
from .layout import RunDir, default_run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster", description=__doc__)
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--no-build", action="store_true", help="fail instead of running build.sh")
    args = parser.parse_args(argv)
    run = RunDir(default_run_dir())
    if args.command == "up":
        cluster = harness.up(run, build=not args.no_build)
        print(f"hub kubeconfig: {cluster.hub_kubeconfig}", file=sys.stderr)
        print(cluster.admin_kubeconfig)
    elif args.command == "down":
        harness.down(run)
    else:
        state = harness.healthy(run)
        if state is None:
            print(f"no healthy cluster in {run.root}", file=sys.stderr)
            return 1
        print(f"{state.server} {run.admin_kubeconfig}")
        print(kueue.describe(run, state), file=sys.stderr)
        print(storage.describe(run, state), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
