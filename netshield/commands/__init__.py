"""Subcommands that live in their own modules. Each module exposes
`register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None`, which adds its
parser(s) and sets `func` to a function `(args: argparse.Namespace) -> int`. Errors are raised as
NetshieldError (the CLI prints them as one line) or returned as exit codes."""
