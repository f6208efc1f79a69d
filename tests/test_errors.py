"""minigpt/errors.py: a UserError is one line whatever it is given; Stopped gets past `except Exception`."""

import signal

import pytest

from minigpt.errors import Stopped, UserError


def test_a_user_error_is_one_line_whatever_it_is_given():
    error = UserError("data.paths: 'a\n  b' does not exist;\n\tgive a folder ")
    assert str(error) == "data.paths: 'a b' does not exist; give a folder"
    assert isinstance(error, ValueError)  # callers that catch ValueError see bad input too


def test_stopped_carries_its_signal_past_except_exception():
    with pytest.raises(Stopped) as caught:
        try:
            raise Stopped(signal.SIGTERM)
        except Exception:  # what a library's cleanup might catch: a stop must not end there
            pytest.fail("Stopped was caught as an Exception")
    assert caught.value.signum == signal.SIGTERM
