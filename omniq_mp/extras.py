"""Optional dependencies: import one or say, in one line, which extra installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from omniq_mp.errors import ConfigError

__all__ = ["require"]


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` for ``what`` (e.g. "PostgreSQL storage").

    :raises ConfigError: naming the extra to install, when the module is missing.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"{what} needs the {module} package: pip install 'omniq_mp[{extra}]'"
        ) from None
