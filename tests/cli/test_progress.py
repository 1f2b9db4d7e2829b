"""The progress display (clipsearch.progress on tqdm): plain lines at most once per
interval into a log, a self-rewriting line on a terminal, quiet prints nothing."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

import pytest

from clipsearch import progress as progress_module
from clipsearch.progress import Progress, format_duration


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch):
    """A hand-moved clock for the module's time.monotonic (tqdm keeps the real one)."""
    now = SimpleNamespace(t=1000.0)
    monkeypatch.setattr(progress_module, "time", SimpleNamespace(monotonic=lambda: now.t))
    return now


def test_a_log_gets_plain_lines_at_most_once_per_interval(clock):
    out = io.StringIO()
    p = Progress(stream=out, interval=10)
    assert not p.is_tty
    p.update("embedded 1/9")   # the first update is shown at once
    clock.t += 5
    p.update("embedded 2/9")   # within the interval: dropped
    clock.t += 4.9
    p.update("embedded 3/9")   # still within it
    clock.t += 0.2
    p.update("embedded 4/9")   # 10.1 s after the last line
    clock.t += 1
    p.update("embedded 5/9")
    p.finish()
    assert out.getvalue() == "embedded 1/9\nembedded 4/9\n"


def test_a_log_with_a_small_real_interval_is_throttled():
    out = io.StringIO()
    p = Progress(stream=out, interval=0.05)
    started = time.monotonic()
    calls = 0
    while time.monotonic() - started < 0.3:
        calls += 1
        p.update(f"embedded {calls}/?")
    seconds = time.monotonic() - started
    p.finish()
    lines = out.getvalue().split("\n")
    assert lines[-1] == ""  # newline-terminated
    lines = lines[:-1]
    assert 2 <= len(lines) <= seconds / 0.05 + 1 < calls
    assert all(line.startswith("embedded ") for line in lines)
    assert "\r" not in out.getvalue()


def test_force_always_prints(clock):
    out = io.StringIO()
    p = Progress(stream=out, interval=3600)
    for i in range(3):
        p.update(f"step {i}", force=True)
    p.update("dropped")
    p.update("final", force=True)
    assert out.getvalue() == "step 0\nstep 1\nstep 2\nfinal\n"


@pytest.mark.parametrize("stream_type", [io.StringIO, FakeTTY])
def test_quiet_prints_nothing(stream_type):
    out = stream_type()
    p = Progress(stream=out, quiet=True, interval=0)
    p.update("embedded 1/2")
    p.update("embedded 2/2", force=True)
    p.message("building the HNSW search index...")
    p.finish()
    assert out.getvalue() == ""


def test_message_prints_its_own_line_into_a_log(clock):
    out = io.StringIO()
    p = Progress(stream=out, interval=10)
    p.update("embedded 1/2")
    p.message("building the HNSW search index over 2 images...")
    clock.t += 1
    p.message("done")  # messages are not throttled
    assert out.getvalue() == "embedded 1/2\nbuilding the HNSW search index over 2 images...\ndone\n"


def test_a_terminal_line_rewrites_itself_and_finish_ends_it(clock):
    out = FakeTTY()
    p = Progress(stream=out, interval=0.25)
    assert p.is_tty
    p.update("embedded 10/100, ETA 0:01:00")
    clock.t += 0.1
    p.update("dropped")  # within the interval
    clock.t += 0.2
    p.update("embedded 20/100")
    shown = out.getvalue()
    assert "\n" not in shown  # still one live line
    assert shown.startswith("\rembedded 10/100, ETA 0:01:00")
    assert "dropped" not in shown
    # the shorter text is padded so no tail of the longer one stays on screen
    assert shown.endswith("\rembedded 20/100" + " " * len(", ETA 0:01:00"))
    p.finish()
    assert out.getvalue().endswith("\n")
    assert out.getvalue().count("\n") == 1
    final = out.getvalue().rstrip("\n").split("\r")[-1]
    assert final.startswith("embedded 20/100")
    p.finish()  # a second finish adds nothing
    assert out.getvalue().count("\n") == 1
    clock.t += 0.3
    p.update("evaluating: 1/5 images")  # after finish, a new line
    p.finish()
    assert out.getvalue().endswith("\revaluating: 1/5 images\n")
    assert out.getvalue().count("\n") == 2


def test_a_message_on_a_terminal_does_not_garble_the_live_line(clock):
    out = FakeTTY()
    p = Progress(stream=out, interval=0)
    p.update("training: step 3/10")
    p.message("resuming from checkpoint-3")
    assert "\nresuming" not in out.getvalue()
    # the live line is cleared, the message gets a line, the live line is redrawn below
    before, after = out.getvalue().split("resuming from checkpoint-3\n")
    assert before.endswith("\r") and before.rstrip("\r ").endswith("training: step 3/10")
    assert after == "\rtraining: step 3/10"
    p.finish()
    assert out.getvalue().endswith("\n")


def test_a_terminal_shows_the_text_literally():
    out = FakeTTY()
    p = Progress(stream=out, interval=0)
    p.update("copied {n} of {total}: 50% |")
    p.finish()
    assert out.getvalue().endswith("\rcopied {n} of {total}: 50% |\n")
    drawn = [piece for piece in out.getvalue().replace("\r", "\n").split("\n") if piece]
    assert drawn and set(drawn) == {"copied {n} of {total}: 50% |"}


def test_rate_and_eta(clock):
    p = Progress(stream=io.StringIO())
    clock.t += 5
    rate, eta = p.rate_and_eta(10, None)
    assert rate == pytest.approx(2.0) and eta == "?"
    assert p.rate_and_eta(0, 100) == (0.0, "?")
    rate, eta = p.rate_and_eta(10, 100)
    assert rate == pytest.approx(2.0) and eta == "0:00:45"
    assert p.elapsed() == pytest.approx(5.0)
    # measured from the first batch in (10 done at t=5): too soon at first, then its own rate
    assert p.rate_and_eta(20, 100, since=(clock.t, 10))[1] == "?"
    clock.t += 2
    rate, eta = p.rate_and_eta(30, 100, since=(clock.t - 2, 10))
    assert rate == pytest.approx(10.0) and eta == "0:00:07"
    assert p.rate_and_eta(100, 100, since=(clock.t, 100))[1] == "0:00:00"  # nothing left


@pytest.mark.parametrize("seconds, text", [
    (0, "0:00:00"), (-3, "0:00:00"), (59.9, "0:00:59"), (65, "0:01:05"),
    (3725, "1:02:05"), (26 * 3600, "26:00:00"),
])
def test_format_duration_is_h_mm_ss(seconds, text):
    assert format_duration(seconds) == text


def test_the_interval_comes_from_the_progress_seconds_setting(monkeypatch):
    assert Progress(stream=io.StringIO()).interval == 10.0
    assert Progress(stream=FakeTTY()).interval == 0.25
    monkeypatch.setenv("CLIPSEARCH_PROGRESS_SECONDS", "0.5")
    assert Progress(stream=io.StringIO()).interval == 0.5
    assert Progress(stream=FakeTTY()).interval == 0.5
    assert Progress(stream=io.StringIO(), interval=2).interval == 2
