"""`db import` and friends against hostile files and kills, second round: batches held to a
size in memory, files that are no export's lines, a kill -9 in the middle of each bulk path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from ollama_meter.ledger import (
    BATCH_BYTES,
    Ledger,
    export_lines,
    import_lines,
    rebuild,
    span_from_line,
    span_to_dict,
)
from tests.ledger.test_transfer import _spans, _tables


def test_an_import_of_calls_with_large_content_holds_a_batch_to_its_bytes_not_its_count(
    sqlite_url: str,
) -> None:
    """20,000 captured calls with a million-character prompt each are 20 GB in one batch: a
    batch is cut when its lines reach BATCH_BYTES, whatever their count."""
    prompt = "p" * 1_000_000
    lines = [
        json.dumps(span_to_dict(replace(span, prompt=prompt))).encode() + b"\n"
        for span in _spans(40)
    ]
    batches: list[int] = []
    summary = import_lines(Ledger(sqlite_url), iter(lines), progress=batches.append)
    expected, held = [0], 0
    for line in lines:  # a batch ends with the line that brings it to BATCH_BYTES
        expected[-1] += 1
        held += len(line)
        if held >= BATCH_BYTES:
            expected.append(0)
            held = 0
    assert expected[0] < 40 and batches == expected
    assert (summary.read, summary.added) == (40, 40)
    assert Ledger(sqlite_url).count() == 40


def test_a_file_whose_lines_end_with_cr_alone_says_how_to_convert_it(
    cli: Any, sqlite_url: str, tmp_path: Path
) -> None:
    """Classic Mac OS line ends read as one line; `trailing characters (byte 991)` did not say
    why. Lines ending CR LF, or some CR LF and some LF, import as they are."""
    lines = [json.dumps(span_to_dict(span)).encode() for span in _spans(4)]
    (tmp_path / "cr.jsonl").write_bytes(b"\r".join(lines) + b"\r")
    (tmp_path / "mixed.jsonl").write_bytes(b"\r\n".join(lines[:2]) + b"\n" + b"\n".join(lines[2:]))
    done = cli("db", "import", str(tmp_path / "cr.jsonl"), "--db", sqlite_url)
    assert (done.code, done.stderr) == (
        2,
        "error: line 1: the file ends its lines with CR alone (classic Mac OS), not LF: convert "
        f"it (tr '\\r' '\\n' < {tmp_path / 'cr.jsonl'} | ometer db import -) and import again\n",
    )
    assert Ledger(sqlite_url).count() == 0
    done = cli("db", "import", str(tmp_path / "mixed.jsonl"), "--db", sqlite_url)
    assert done.code == 0 and Ledger(sqlite_url).count() == 4


def test_an_import_killed_in_the_middle_of_a_batch_and_run_again_counts_each_span_once(
    db_url: str,
) -> None:
    """kill -9 with one batch committed and the next half read: the batch in progress is not
    recorded, and the same import again adds the rest, each span once, rollups as a rebuild's."""
    prompt = "p" * 1_000_000  # so a batch (BATCH_BYTES) is a few dozen lines
    lines = [
        json.dumps(span_to_dict(replace(span, prompt=prompt))).encode() + b"\n"
        for span in _spans(50)
    ]
    first = next(n for n in range(1, 50) if sum(map(len, lines[:n])) >= BATCH_BYTES)
    ledger = Ledger(db_url)
    env = {**os.environ, "OMETER_DB_URL": db_url, "OMETER_CAPTURE_CONTENT": "true"}  # the prompts
    command = [sys.executable, "-m", "ollama_meter", "db", "import", "-"]
    with subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdin is not None
        proc.stdin.write(b"".join(lines[: first + 5]))  # one batch and five lines of the next
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while ledger.count() < first and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.kill()
        proc.wait(timeout=60)
    assert ledger.count() == first
    again = subprocess.run(
        command, env=env, input=b"".join(lines), capture_output=True, check=False, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert f"imported {50 - first} span(s) into ".encode() in again.stdout
    assert f"({first} already there)".encode() in again.stdout
    assert ledger.count() == 50
    kept = _tables(ledger)
    rebuild(ledger.write, ledger.read)
    assert _tables(ledger) == kept


_FIELDS = ("id", "started_at", "ended_at", "request_model", "response_model", "operation",
    "source", "status", "error_type", "done_reason", "token_source", "duration_source",
    "upstream_host", "trace_id", "otel_span_id", "currency", "cost", "cost_parts.tokens",
    "cost_parts.fee")  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    field=st.sampled_from(_FIELDS),
    value=st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1),
    size=st.integers(300, 2_000_000),
)
def test_a_refused_field_of_any_size_is_named_in_one_short_line(
    field: str, value: str, size: int
) -> None:
    """A 60 MB model name is refused in a line of a few words, not echoed whole (longer than
    any field holds: 255 characters)."""
    data = span_to_dict(_spans(1)[0])
    value = (value * (size // len(value) + 1))[:size] + " "
    *parent, key = field.split(".")
    (data[parent[0]] if parent else data)[key] = value
    with pytest.raises(ValueError) as caught:
        span_from_line(json.dumps(data).encode())
    message = str(caught.value)
    assert message.startswith((f"{field} '", f'{field} "')) and len(message) <= 400, message[:500]
    assert f"({size + 1:,} characters)" in message


def test_reading_lines_of_ever_new_long_names_holds_few_of_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Names found valid are remembered (they repeat on every line of a real export); a
    hostile file naming a new user, model and host of 128-255 characters on each line had kept
    100,000 of them: about 250 MB, for as long as the process lived. With the bound at 300
    (10,000 in use), 3,000 such lines: all of them held are 4.7 MB, the bound's 0.5 MB."""
    from ollama_meter.ledger import _line

    monkeypatch.setattr(_line, "_CHECKED_MOST", 300)
    data = span_to_dict(_spans(1)[0])
    tracemalloc.start()
    try:
        for number in range(3_000):
            data["user"] = f"{number:0128d}"
            data["request_model"] = data["response_model"] = f"m{number:0254d}"
            data["upstream_host"] = f"http://h{number:0247d}"
            span_from_line(json.dumps(data).encode())
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 1.5 * 2**20, f"{held / 2**20:.1f} MiB"


def test_exports_saved_with_a_byte_order_mark_and_concatenated_import_whole(
    sqlite_url: str,
) -> None:
    """`cat a.jsonl b.jsonl`, each saved by an editor that puts a BOM first: the BOM of b
    starts a line in the middle, and was refused as `invalid character (byte 0)`."""
    lines = [json.dumps(span_to_dict(span)).encode() + b"\n" for span in _spans(5)]
    bom = b"\xef\xbb\xbf"
    joined = bom + b"".join(lines[:2]) + bom + b"".join(lines[2:4]) + bom + b"\n" + lines[4]
    summary = import_lines(Ledger(sqlite_url), joined.splitlines(keepends=True))
    assert (summary.read, summary.added) == (5, 5)


def test_an_export_of_calls_with_large_content_holds_a_few_of_them_at_a_time(
    db_url: str,
) -> None:
    """Rows were fetched 2,000 at a time: 2,000 captured calls of a million-character prompt
    and reply each are 4 GB or more. A fetch now holds about BATCH_BYTES of lines."""
    ledger = Ledger(db_url)
    content = "c" * 1_000_000
    spans = [replace(span, prompt=content, reply=content) for span in _spans(80)]
    for start in range(0, 80, 10):
        ledger.record(spans[start : start + 10])
    tracemalloc.start()
    try:
        count = sum(1 for _ in export_lines(ledger))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 80
    assert peak < 3 * BATCH_BYTES, f"{peak / 2**20:.0f} MiB"  # 80 calls are 160 MB


_REBUILD_RSS = """
import sys
from pathlib import Path
from ollama_meter.ledger import Ledger, rebuild

def peak():  # ru_maxrss would be the parent's: it is kept across exec
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) // 1024

ledger = Ledger(sys.argv[1])
ledger.count()
before = peak()
rebuild(ledger.write, ledger.read)
print(peak() - before)
"""


def test_a_rollup_rebuild_reads_no_prompt_or_reply(db_url: str) -> None:
    """`db rollup` read a day's spans whole: PostgreSQL's driver holds a result entire, so a
    day of captured calls (120 MB here) was all in memory at once. Rollups need no content."""
    ledger = Ledger(db_url)
    content = "c" * 1_000_000
    spans = _spans(60)
    day = spans[0].started_at
    spans = [
        replace(span, started_at=day + timedelta(seconds=n), ended_at=None, prompt=content,
                reply=content)
        for n, span in enumerate(spans)
    ]  # fmt: skip
    for start in range(0, 60, 10):
        ledger.record(spans[start : start + 10])
    kept = _tables(ledger)
    grown = subprocess.run(
        [sys.executable, "-c", _REBUILD_RSS, db_url],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert int(grown.stdout) < 40, f"{grown.stdout} MiB"  # the day's content is 120 MB
    assert _tables(ledger) == kept
