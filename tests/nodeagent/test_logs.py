"""CRI log lines written from output chunks, and read back with the kubelet's options: exact bytes."""

from datetime import UTC, datetime

from mljob.nodeagent.logs import MAX_LINE, Entry, LogWriter, Options, parse, render, select, termination_message


def test_writer_splits_lines_streams_and_long_lines(tmp_path):
    path = tmp_path / "c" / "0.log"
    writer = LogWriter(path)
    writer.feed("stdout", b"hello\nwor")
    writer.feed("stderr", b"oops\n")
    writer.feed("stdout", b"ld\n" + b"x" * (MAX_LINE + 3) + b"\n")
    writer.feed("stdout", b"no newline")
    writer.close()
    entries = parse(path.read_bytes())
    assert [(e.stream, e.full, e.text) for e in entries] == [
        ("stdout", True, b"hello"),
        ("stderr", True, b"oops"),
        ("stdout", True, b"world"),
        ("stdout", False, b"x" * MAX_LINE),
        ("stdout", True, b"xxx"),
        ("stdout", True, b"no newline"),
    ]
    assert render(entries, Options()).endswith(b"x" * MAX_LINE + b"xxx\nno newline\n")


def entries(*texts, time="2026-01-01T00:00:00.000001Z"):
    return [Entry(time, "stdout", True, t) for t in texts]


def test_tail_lines_counts_whole_lines():
    lines = [*entries(b"a"), Entry("2026-01-01T00:00:00Z", "stdout", False, b"b1"), *entries(b"b2", b"c")]
    assert render(select(lines, Options(tail_lines=2)), Options()) == b"b1b2\nc\n"
    assert render(select(lines, Options(tail_lines=0)), Options()) == b""
    assert render(select(lines, Options(tail_lines=10)), Options()) == b"a\nb1b2\nc\n"


def test_timestamps_and_since():
    old = entries(b"old", time="2026-01-01T00:00:00.5Z")
    new = entries(b"new", time="2026-01-01T00:00:10.123456Z")
    since = datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)
    chosen = select(old + new, Options(since=since))
    assert render(chosen, Options(timestamps=True)) == b"2026-01-01T00:00:10.123456Z new\n"


def test_termination_message_is_the_logs_end(tmp_path):
    path = tmp_path / "0.log"
    writer = LogWriter(path)
    writer.feed("stdout", b"".join(b"line %d\n" % i for i in range(100)))
    writer.feed("stderr", b"Traceback: boom\n")
    writer.close()
    message = termination_message(path)
    assert message.endswith("line 99\nTraceback: boom\n")
    assert message.startswith("line 21\n")  # the last 80 lines
    assert termination_message(tmp_path / "missing.log") == ""
