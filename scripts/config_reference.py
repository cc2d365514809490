#!/usr/bin/env python3
"""Print the configuration reference (Markdown tables) from the settings code.

    python scripts/config_reference.py              # print the tables
    python scripts/config_reference.py --check      # docs/configuration.md and .ja.md
    python scripts/config_reference.py --write docs/configuration.md docs/configuration.ja.md

--check exits 1 when a file's marked block differs from the code; --write
replaces the block between the markers in place. Without file names both
act on the pages of ``stack.reference.DOCUMENTS``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stack import reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="check the files' blocks")
    action.add_argument("--write", action="store_true", help="rewrite the files' blocks")
    parser.add_argument("files", nargs="*", type=Path,
                        help=f"default: {' '.join(reference.DOCUMENTS)}")
    args = parser.parse_args(argv)
    files = args.files or [Path(__file__).resolve().parents[1] / name
                           for name in reference.DOCUMENTS]
    missing = reference.missing_sections()
    if missing:
        print(f"note: no settings class found for [{'], ['.join(missing)}]", file=sys.stderr)
    if not (args.check or args.write):
        print(reference.markdown(), end="")
        return 0
    stale = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        if reference.current_block(text) is None:
            print(f"{path}: no configuration reference block", file=sys.stderr)
            return 1
        updated = reference.update(text)
        if updated != text:
            if args.write:
                path.write_text(updated, encoding="utf-8")
                print(f"{path}: updated")
            else:
                stale.append(path)
    for path in stale:
        print(f"{path}: the configuration reference is out of date; run "
              f"scripts/config_reference.py --write {path}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
