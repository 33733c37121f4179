"""The package imports its public names on first use: every documented name still
resolves, and a worker process, which imports only ``omniq_mp.child``, does not load the
client, supervisor and storage modules (each worker would inherit them)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import omniq_mp


def fresh_python(code: str) -> str:
    """What ``code`` prints in a new interpreter (nothing of this one's imports)."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_every_public_name_resolves_to_the_object_its_module_defines() -> None:
    for name in omniq_mp.__all__:
        value = getattr(omniq_mp, name)
        if name != "__version__":
            assert getattr(sys.modules[value.__module__], value.__name__) is value


def test_star_import_and_dir_give_the_public_names() -> None:
    names = fresh_python(
        "from omniq_mp import *; import omniq_mp; "
        "print(sorted(n for n in omniq_mp.__all__ if n not in globals()))"
    )
    assert names == "[]"
    assert set(omniq_mp.__all__) <= set(dir(omniq_mp))


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'OmniQueue'"):
        omniq_mp.OmniQueue  # noqa: B018


def test_a_worker_loads_none_of_the_client_supervisor_or_storage_modules() -> None:
    loaded = fresh_python(
        "import sys, omniq_mp.child; "
        "print(sorted(m for m in sys.modules if m.startswith('omniq_mp.')))"
    )
    for heavy in ("core", "sync", "worker", "pool", "queue", "storage", "events", "eventstore"):
        assert f"'omniq_mp.{heavy}'" not in loaded, loaded
