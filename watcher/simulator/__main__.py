"""`python -m watcher.simulator`: a local fake MetaStudio list API to try configs against.

Credentials default to the CLOUD_SDK_AK / CLOUD_SDK_SK environment variables, else fixed demo keys.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from watcher.simulator.runner import serve_forever
from watcher.simulator.state import ApiBehaviour


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m watcher.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--jobs", type=int, default=40, help="jobs to create at start")
    parser.add_argument(
        "--step-every", type=float, default=2.0, help="seconds between lifecycle steps; 0: never"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--project-id", default="sim-project")
    parser.add_argument(
        "--api-behaviour",
        choices=[b.value for b in ApiBehaviour],
        default=ApiBehaviour.FULL.value,
        help="full: also the undocumented update_since and sort_key (default); documented: "
        "only what the API page documents, state validated; plain: offset/limit and exact "
        "filters only",
    )
    parser.add_argument(
        "--cache-listings",
        action="store_true",
        help="keep each sorted listing until the next change (large --jobs: without it every "
        "page re-filters and re-sorts every job)",
    )
    args = parser.parse_args(argv)
    # Keys come from the environment rather than argv so they stay out of `ps` output.
    ak = os.environ.get("CLOUD_SDK_AK", "SIMULATORAK")
    sk = os.environ.get("CLOUD_SDK_SK", "simulator-secret-key")
    try:
        asyncio.run(
            serve_forever(
                args.host,
                args.port,
                jobs=args.jobs,
                step_every=args.step_every or None,
                seed=args.seed,
                project_id=args.project_id,
                ak=ak,
                sk=sk,
                api_behaviour=ApiBehaviour(args.api_behaviour),
                cache_listings=args.cache_listings,
            )
        )
    except OSError as err:
        print(f"simulator: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
