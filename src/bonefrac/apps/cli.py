"""bonefrac command line: parse, call one library function, turn user errors into one line.

Exit codes: 0 success; 1 some inputs failed or a user error (one-line message, no traceback); 2 usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from bonefrac.apps.commands import COMMANDS
from bonefrac.apps.extras import MissingExtraError
from bonefrac.errors import BonefracError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bonefrac", description="Find bone fractures in X-ray images.")
    from bonefrac._version import __version__

    parser.add_argument("--version", action="version", version=f"bonefrac {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    from bonefrac.io.read import ImageReadWarning

    # For this command only (restored on return, so an in-process caller keeps its own settings): reader
    # warnings (truncated JPEGs, extra frames) are reported per file in the output, others in one line.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ImageReadWarning)
        warnings.showwarning = _one_line_warning
        try:
            return args.func(args)
        except MissingExtraError as e:  # its message already starts with "bonefrac COMMAND needs ..."
            print(e, file=sys.stderr)
            return 1
        except BonefracError as e:
            print(f"bonefrac: error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bonefrac: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            # `bonefrac predict DIR | head`: the reader left. Point stdout at devnull so that the interpreter's
            # final flush does not raise a second time (the recipe of Python's signal docs), and stop quietly.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1


def _one_line_warning(message: Warning | str, *_args: object, **_kwargs: object) -> None:
    print(f"bonefrac: warning: {message}", file=sys.stderr)


def run() -> None:
    """The `bonefrac` console script and `python -m bonefrac`."""
    sys.exit(main())


if __name__ == "__main__":
    run()
