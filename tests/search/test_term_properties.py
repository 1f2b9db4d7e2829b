"""Property-based tests (Hypothesis) of the two small syntaxes the CLI parses itself:
query terms (`--add [W:]TEXT|IMAGE`, `--subtract ...`, search/terms.py) and shards
(`--shard I/N`, clipsearch/config.py and ingest/pipeline.py). For any text, the
parser gives a value that matches what was written, or one line of error that names
the flag; never another exception, never a NaN or infinite weight. The CLI-level
properties run `clipsearch search` and `clipsearch ingest` through click's CliRunner,
the search ones against a real index of drawn images and the tiny model."""

from __future__ import annotations

import json
import math
import os
import string

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import clipsearch.ingest.pipeline as pipeline
from clipsearch import config
from clipsearch.cli import cli
from clipsearch.errors import ClipsearchError
from clipsearch.ingest import IngestOptions, ingest
from clipsearch.search.terms import MAX_WEIGHT, MIN_WEIGHT, Term, parse_term

from support import draw_collection, settings_for

# No shrinking database on disk, no deadline (the CLI ones open an index per example).
FAST = settings(max_examples=500, deadline=None, database=None)
LINE_BREAKS = ("\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")

# Text that reads like terms and shards, and anything at all.
NUMBERISH = st.from_regex(r"\A[ \t]*[+-]?[0-9]{0,4}(\.[0-9]{0,3})?([eE][+-]?[0-9]{1,3})?[ \t]*\Z")
WORDS = st.text(alphabet=string.ascii_letters + " :./~-_", max_size=12)
TERMS = st.one_of(
    st.text(),
    st.builds(lambda w, t: f"{w}:{t}", NUMBERISH | st.sampled_from(["nan", "inf", "-inf", "1e999", "1_0", "١",
                                                                     "0", "-0", "Infinity", "0x10", ""]), st.text()),
    st.builds(lambda w, t: f"{w}:{t}", NUMBERISH, WORDS),
)


def one_line(message: str) -> bool:
    return message != "" and not any(brk in message for brk in LINE_BREAKS)


def check_term(spec: str, sign: float, option: str, images: bool) -> Term | None:
    """parse_term's contract for one input: a sound Term, or ClipsearchError in one
    line that names the option. Returns the Term (None after an error)."""
    try:
        term = parse_term(spec, sign, option, images=images)
    except ClipsearchError as exc:
        message = str(exc)
        assert one_line(message), repr(message)
        assert message.startswith(option + " "), message
        return None
    assert term.kind in ("text", "image") and (images or term.kind == "text")
    if term.kind == "text":
        assert term.value and term.value == term.value.strip()
    else:
        assert os.path.isabs(term.value) and os.path.isfile(term.value)
    assert math.isfinite(term.weight) and MIN_WEIGHT <= abs(term.weight) <= MAX_WEIGHT, term
    assert math.copysign(1.0, term.weight) == sign
    assert term.value in spec or term.kind == "image"  # the text is the user's own, cut at most
    return term


@given(spec=TERMS, sign=st.sampled_from([1.0, -1.0]), images=st.booleans())
@example(spec="nan:beach", sign=1.0, images=True)  # float("nan") used to pass as a weight: a NaN query
@example(spec="inf:beach", sign=1.0, images=True)
@example(spec="1e999:beach", sign=-1.0, images=True)
@example(spec="1e300:beach", sign=1.0, images=False)  # finite, but infinite once it meets a float32 vector
@example(spec="~a\x00b/x.jpg", sign=1.0, images=True)  # os.path.expanduser raised ValueError
@example(spec="~\ud800/x.jpg", sign=1.0, images=True)  # ... and UnicodeEncodeError
@FAST
def test_any_term_is_a_term_or_one_line_naming_the_flag(spec, sign, images):
    """max_examples=500 (plus the explicit examples): arbitrary text, and text shaped
    like W:TEXT with odd weights."""
    check_term(spec, sign, "--add" if sign > 0 else "--subtract", images)


@given(weight=st.floats(MIN_WEIGHT, MAX_WEIGHT), text=st.text(min_size=1), sign=st.sampled_from([1.0, -1.0]))
@example(weight=2.0, text="10:30 train", sign=1.0)  # a weight in front keeps a number-and-colon text whole
@example(weight=1.0, text="Nan: portrait", sign=-1.0)
@FAST
def test_a_weight_in_front_of_any_text_round_trips(weight, text, sign):
    """max_examples=500: repr(W) + ':' + TEXT is exactly (TEXT stripped, ±W), whatever
    TEXT holds (colons, numbers, spaces, any character), as text when images are off."""
    assume(text.strip())
    term = parse_term(f"{weight!r}:{text}", sign, images=False)
    assert term == Term("text", text.strip(), sign * weight)


@given(text=st.text(min_size=1).filter(lambda t: ":" not in t), sign=st.sampled_from([1.0, -1.0]))
@FAST
def test_text_without_a_colon_is_itself_with_weight_one(text, sign):
    """max_examples=500: no colon, no weight: the term is the text, stripped."""
    assume(text.strip())
    assert parse_term(text, sign, images=False) == Term("text", text.strip(), sign)


@given(head=st.sampled_from(["nan", "NaN", "inf", "Infinity", "1_000", "١", "0x1f", "Note", "10 30"]),
       text=WORDS.filter(str.strip))
@settings(max_examples=100, deadline=None, database=None)
def test_what_float_reads_but_is_no_plain_number_stays_text(head, text):
    """max_examples=100: a head float() would accept (nan, inf, 1_000, Arabic-Indic
    digits) but that is no plain decimal weight is part of the text."""
    assert parse_term(f"{head}:{text}", images=False) == Term("text", f"{head}:{text}".strip(), 1.0)


def test_weights_out_of_range_name_the_flag_and_the_term():
    for spec, needle in [("0:x", "weight must be positive"), ("-2:x", "weight must be positive"),
                         ("1e7:x", "from 1e-06 to 1e+06"), ("1e-9:x", "from 1e-06 to 1e+06"),
                         ("1e999:x", "'1e999'")]:
        with pytest.raises(ClipsearchError) as info:
            parse_term(spec, -1.0, "--subtract")
        assert str(info.value).startswith("--subtract ") and needle in str(info.value) and repr(spec) in str(info.value)


@given(name=st.text(alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
                    min_size=1, max_size=30),
       suffix=st.sampled_from([".jpg", ".PNG", ".webp"]), weight=st.floats(MIN_WEIGHT, MAX_WEIGHT))
@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_an_existing_image_file_is_an_image_term(tmp_path, name, suffix, weight):
    """max_examples=150: W:PATH of an existing image file, whatever its name holds
    (colons, spaces, line breaks), is that file's real path with weight W; with
    images off (a server) it is text."""
    path = tmp_path / f"{name}{suffix}"
    try:
        path.touch()
    except OSError:  # a name too long for the file system
        assume(False)
    assert parse_term(f"{weight!r}:{path}", -1.0, "--subtract") == Term("image", os.path.realpath(path), -weight)
    assert parse_term(f"{weight!r}:{path}", images=False) == Term("text", str(path), weight)


# -- shards -------------------------------------------------------------------------------

SHARDS = st.one_of(
    st.text(),
    st.builds(lambda i, n: f"{i}/{n}", NUMBERISH, NUMBERISH),
    st.builds(lambda i, n: f"{i}/{n}", st.integers(-3, 12), st.integers(-3, 12)),
    st.sampled_from(["1/2/3", "/", "1/", "/2", "١/٢", "1_0/20", "0x1/4", "1.0/4", "9" * 5000 + "/1"]),
)


@given(text=SHARDS)
@FAST
def test_any_shard_text_is_a_shard_or_one_line_naming_the_flag(text):
    """max_examples=500: the settings table's parser gives 0 <= I < N or a ValueError
    whose phrase reads after the value; ingest's gives the same or a ClipsearchError
    naming --shard and the value; the two agree."""
    try:
        shard = config.parse_shard(text)
    except ValueError as exc:
        assert one_line(str(exc)) and str(exc).startswith("is not of the form I/N")
        with pytest.raises(ClipsearchError) as info:
            pipeline.parse_shard(text)
        message = str(info.value)
        assert one_line(message) and message.startswith(f"--shard {text!r} is not of the form I/N"), message
        return
    i, n = shard
    assert isinstance(i, int) and isinstance(n, int) and 0 <= i < n
    assert pipeline.parse_shard(text) == shard
    assert [int(part) for part in text.split("/")] == [i, n]  # what was written, read as numbers


@given(n=st.integers(1, 10**12), data=st.data())
@FAST
def test_a_shard_round_trips(n, data):
    """max_examples=500: I/N for every 0 <= I < N parses to (I, N)."""
    i = data.draw(st.integers(0, n - 1))
    assert config.parse_shard(f"{i}/{n}") == pipeline.parse_shard(f"{i}/{n}") == (i, n)


# -- the CLI ------------------------------------------------------------------------------

def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:")]


def test_ingest_shard_flag_and_variable_through_the_cli(tmp_path, monkeypatch):
    """max_examples=300: `clipsearch ingest --shard X`, and CLIPSEARCH_SHARD=X: a usage
    error (exit 2) or a settings error (exit 1) of one line naming the flag or the
    variable, or the run starts with exactly the parsed shard (a blank value: no
    shard, as an unset variable). No model is needed: a bad value stops before the
    command runs, and the run itself is stood in for here to catch what it is given."""
    photos = tmp_path / "photos"
    photos.mkdir()
    given_options: list[IngestOptions] = []

    def fake_ingest(folders, settings=None, options=None, **kwargs):
        given_options.append(options)
        return pipeline.IngestSummary()

    monkeypatch.setattr(pipeline, "ingest", fake_ingest)
    runner = CliRunner()
    base = ["ingest", str(photos), "--index", str(tmp_path / "index"), "--model", str(tmp_path / "model"), "--json"]

    def expected(text, as_flag):
        """The shard the run should get: a blank flag and an empty variable are unset."""
        if (as_flag and not text.strip()) or not text:
            return None
        return config.parse_shard(text)

    @given(text=SHARDS, as_flag=st.booleans())
    @settings(max_examples=300, deadline=None, database=None)
    def check(text, as_flag):
        if as_flag:
            result = runner.invoke(cli, [*base, "--shard", text])
        else:
            assume("\x00" not in text and not any("\ud800" <= c <= "\udfff" for c in text))
            result = runner.invoke(cli, base, env={"CLIPSEARCH_SHARD": text})
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert "Traceback" not in result.output
        try:
            shard = expected(text, as_flag)
        except ValueError:
            [line] = error_lines(result.output)
            if as_flag:
                assert result.exit_code == 2 and line.startswith("Error: Invalid value for '--shard': "), line
            else:
                assert result.exit_code == 2 and line.startswith("Error: CLIPSEARCH_SHARD="), line
            return
        assert result.exit_code == 0, result.output
        assert given_options.pop().shard == shard

    check()


@pytest.fixture
def search_args(tmp_path, encoder, tiny_model_dir):
    """A small edge index of drawn images (the tiny model), and the text tower exported,
    so that each search below takes the fast path."""
    photos = tmp_path / "photos"
    draw_collection(photos, 8)
    settings = settings_for("edge", tmp_path, tiny_model_dir)
    ingest([str(photos)], encoder, options=IngestOptions(workers=0, quiet=True), settings=settings)
    args = ["--index", settings.index, "--collection", settings.collection, "--model", str(tiny_model_dir)]
    warm = CliRunner().invoke(cli, ["search", "warm-up", *args])
    assert warm.exit_code == 0, warm.output
    return args, photos


TERM_LISTS = st.lists(TERMS, max_size=2)


def test_search_with_odd_terms_through_the_cli(search_args, tmp_path):
    """max_examples=100: `clipsearch search [QUERY] --add A... --subtract S...` with
    arbitrary terms: hits with finite scores, in order, or one error line naming what
    was wrong (a flag, the empty query, nothing to search for, terms that cancel out).
    Never another exception, never a NaN score from a NaN weight."""
    args, photos = search_args
    runner = CliRunner()
    image = str(sorted(photos.iterdir())[0])

    @given(query=st.none() | TERMS | st.just(image), add=TERM_LISTS, subtract=TERM_LISTS | st.just([image]))
    @example(query="a red circle", add=["nan:blue"], subtract=[])  # a NaN weight used to reach the index
    @example(query=None, add=["inf:blue", "2:green"], subtract=["1e300:red"])
    @example(query="x", add=[], subtract=["x"])  # cancels out exactly
    @settings(max_examples=100, deadline=None, database=None)
    def check(query, add, subtract):
        command = ["search", *args, "-k", "3", "-f", "json"]
        for flag, terms in (("--add", add), ("--subtract", subtract)):
            for term in terms:
                command += [flag, term]
        if query is not None:
            command += ["--", query]
        result = runner.invoke(cli, command)
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert "Traceback" not in result.output
        if result.exit_code == 0:
            hits = [json.loads(line) for line in result.stdout.splitlines()]
            assert 1 <= len(hits) <= 3
            scores = [hit["score"] for hit in hits]
            assert all(math.isfinite(s) and -1.0001 <= s <= 1.0001 for s in scores), scores
            assert scores == sorted(scores, reverse=True)
            return
        [line] = error_lines(result.output)
        # 2: a term that cannot be read (a bad weight, empty words); 1: what it names is no
        # usable image here, or the terms cancel out
        usage = any(needle in line for needle in ("weight must", "needs a text", "query is empty", "not UTF-8 text",
                                                  "nothing to search for"))
        assert result.exit_code == (2 if usage else 1), result.output
        assert any(needle in line for needle in ("--add ", "--subtract ", "query is empty", "nothing to search for",
                                                 "cancel out", "image ")), line

    check()
