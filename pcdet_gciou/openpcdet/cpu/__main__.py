"""``python -m pcdet_gciou.openpcdet.cpu [--device cpu|cuda]``: print what the portable layer does here."""

from __future__ import annotations

import argparse
import sys

from ._install import install


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pcdet_gciou.openpcdet.cpu",
        description="Print which OpenPCDet ops the portable layer replaces on this machine (imports no pcdet).",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    args = parser.parse_args(argv)
    try:
        report = install(args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
