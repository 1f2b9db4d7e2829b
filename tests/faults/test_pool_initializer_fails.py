"""A worker whose initializer fails (a library that will not load in the new process)
ends before any worker started, as a script without the __main__ guard makes it end:
the error must say the initializer's own reason, not send the user to add a guard."""

from __future__ import annotations

import pytest

from clipsearch.errors import ClipsearchError
from clipsearch.pools import in_order, spawn_pool

from faults.failing_initializer import double, fail


def test_in_order_says_why_the_workers_could_not_start(capfd):
    with pytest.raises(ClipsearchError) as caught:
        list(in_order([(n, double, n) for n in range(4)], workers=2, window=4, initializer=fail))
    message = str(caught.value)
    assert message.startswith("the decoding processes could not start (exit status 1): ImportError: libheif.so.1")
    assert "__main__" not in message and "\n" not in message
    assert "Traceback" not in capfd.readouterr().err  # the workers print none


def test_spawn_pool_says_why_too(capfd):
    with pytest.raises(ClipsearchError) as caught:
        spawn_pool(2, initializer=fail)
    assert "could not start (exit status 1): ImportError: libheif.so.1" in str(caught.value)
    assert "__main__" not in str(caught.value)
    assert "Traceback" not in capfd.readouterr().err


def test_a_sound_initializer_still_runs_the_tasks():
    from clipsearch.images import decoder_init

    assert list(in_order([(n, double, n) for n in range(5)], workers=2, window=3, initializer=decoder_init)) == \
        [(n, 2 * n) for n in range(5)]
