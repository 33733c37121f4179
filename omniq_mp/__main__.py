"""``python -m omniq_mp`` and the ``omniq-mp`` command."""

from __future__ import annotations

import sys


def main() -> None:
    """Console-script entry point: load the CLI, then run it.

    Loading takes a moment (the CLI imports the client and the supervisor). A Ctrl-C in
    that moment ends the command as one during it does, with click's ``Aborted!`` and
    exit status 1, not with a traceback of whichever import it interrupted.
    """
    try:
        from omniq_mp.cli import main as run_cli
    except KeyboardInterrupt:
        sys.stderr.write("Aborted!\n")
        sys.exit(1)
    run_cli()


if __name__ == "__main__":
    main()
