"""`db import` and friends against hostile files and kills, second round: batches held to a
size in memory, files that are no export's lines, a kill -9 in the middle of each bulk path."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from ollama_meter.ledger import BATCH_BYTES, Ledger, import_lines, span_to_dict
from tests.ledger.test_transfer import _spans


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
