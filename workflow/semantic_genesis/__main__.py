"""Command line: `python -m semantic_genesis import-weights [--format FORMAT] SRC.pt DEST/` and
`python -m semantic_genesis tables RESULTS/ [RESULTS/ ...] --out DIR/`."""

from __future__ import annotations

import argparse
import sys

from .networks.external import FORMATS, WeightsImportError, import_weights


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; errors print one line and exit 1."""
    parser = argparse.ArgumentParser(prog="python -m semantic_genesis")
    commands = parser.add_subparsers(dest="command", required=True)
    weights = commands.add_parser(
        "import-weights", help="convert the authors' released checkpoint into a pretrained folder"
    )
    weights.add_argument(
        "--format", default="auto", choices=[*FORMATS, "auto"], help="whose checkpoint SRC is (auto: by its keys)"
    )
    weights.add_argument("src", help="the checkpoint, e.g. Genesis_Chest_CT.pt or semantic_genesis_chest_ct.pt")
    weights.add_argument("dest", help="the folder to write (new or empty)")
    gathered = commands.add_parser("tables", help="the result tables over the runs of several results folders")
    gathered.add_argument("folders", nargs="+", help="results folders (each holding finetune/<task>/<method>/run<r>/)")
    gathered.add_argument("--out", required=True, help="where the tables, runs.csv and sources.csv go")
    args = parser.parse_args(argv)
    if args.command == "tables":
        from .tables.gather import gather_results

        try:
            frame = gather_results(args.folders, args.out)
        except (FileNotFoundError, ValueError) as error:
            print(f"tables: {error}", file=sys.stderr)
            return 1
        print(f"wrote the tables of {len(frame)} runs from {len(args.folders)} folders to {args.out}")
        return 0
    try:
        dest = import_weights(args.src, args.dest, args.format)
    except (WeightsImportError, FileNotFoundError, FileExistsError) as error:
        print(f"import-weights: {error}", file=sys.stderr)
        return 1
    print(f"wrote {dest}: load it with semantic_genesis.networks.genesis.load_pretrained({str(dest)!r}, part='unet')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
