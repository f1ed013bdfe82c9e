"""What the commands share: argparse types with ranges (`arguments`) and opening a snapshot with one-line
errors (`snapshots`). Part of the commands' layer; the library never imports it."""
