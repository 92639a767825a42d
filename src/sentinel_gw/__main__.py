"""The `sentinel-gw` command, `python -m sentinel_gw` and the zipapp's entry point.

`serve` launches its stdio backends first, before the CLI is even imported (early.py): they
boot while the gateway starts. Every other command goes straight to the CLI.
"""

from __future__ import annotations

import sys


def main() -> int:
    argv = sys.argv[1:]
    from sentinel_gw.early import launch_early

    early = launch_early(argv)
    try:
        from sentinel_gw.cli import main as cli_main

        return cli_main(argv, early=early)
    finally:
        early.discard()  # whatever serve did not adopt (it failed before it could): no orphan


if __name__ == "__main__":
    raise SystemExit(main())
