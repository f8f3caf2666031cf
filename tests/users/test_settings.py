"""The users service's settings: the default, a value, and a bad value named."""

from __future__ import annotations

import pytest

from runtime.config import ConfigError
from services.users.settings import CONDITION_TIMEOUT_VARIABLE, UserSettings, load_settings

pytestmark = pytest.mark.users


def test_default_and_value() -> None:
    assert load_settings({}) == UserSettings(condition_timeout=60.0)
    assert load_settings({CONDITION_TIMEOUT_VARIABLE: "1.5"}).condition_timeout == 1.5


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan"])
def test_a_bad_value_is_refused_with_its_name(value: str) -> None:
    with pytest.raises(ConfigError, match=CONDITION_TIMEOUT_VARIABLE) as refused:
        load_settings({CONDITION_TIMEOUT_VARIABLE: value})
    assert "is not a positive number of seconds" in str(refused.value)
