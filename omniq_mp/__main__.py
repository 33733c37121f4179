"""``python -m omniq_mp`` is the ``omniq-mp`` command."""

from __future__ import annotations

from omniq_mp.cli import main

main()
