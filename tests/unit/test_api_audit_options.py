"""Option and setting checks found wanting in an audit of the Python API: a bad value is
refused where it enters, with an error naming it."""

from __future__ import annotations

import pytest

from omniq_mp import Settings
from omniq_mp.errors import ConfigError
from omniq_mp.schedule import check_cron


@pytest.mark.parametrize("expression", ["* * * * * *", "0 */5 * * * *", "0 3 * * *  2027"])
def test_cron_takes_five_fields_only(expression: str) -> None:
    # cronsim reads a sixth leading field as seconds: "* * * * * *" would fire every second.
    with pytest.raises(ConfigError, match="5 fields"):
        check_cron(expression, "UTC")


def test_five_field_cron_with_extra_spaces_is_accepted() -> None:
    check_cron(" */5  *  * * * ", "Europe/Berlin")


@pytest.mark.parametrize("tz", [None, 5, b"UTC"])
def test_a_timezone_that_is_not_text_is_a_config_error(tz: object) -> None:
    with pytest.raises(ConfigError, match="tz must be an IANA timezone name"):
        check_cron("* * * * *", tz)  # type: ignore[arg-type]


def test_queues_given_as_a_list_are_kept_as_a_tuple() -> None:
    names = ["high", "default"]
    settings = Settings(queues=names)
    names.append("low")  # the caller's list is not the settings' list
    assert settings.queues == ("high", "default")
    assert hash(settings) == hash(Settings(queues=("high", "default")))


@pytest.mark.parametrize(
    ("variable", "raw", "kind"),
    [
        ("OMNIQ_PROCS", "four", "int"),
        ("OMNIQ_DEFAULT_TIMEOUT", "soon", "float or none"),
        ("OMNIQ_MAX_TASKS_PER_CHILD", "many", "int or none"),
    ],
)
def test_a_bad_environment_value_names_the_type_readably(
    variable: str, raw: str, kind: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: raw})
    assert str(caught.value) == f"{variable}={raw!r} is not a valid {kind}"
