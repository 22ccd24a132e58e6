"""The ratings journal of `genforge review` (issue 17 item 2, its storage): every rating is
stored the moment it is made; a crash, a restart or two raters at once lose nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from genforge_operator.review.journal import Journal, fold, parse

WRITER = """
import sys
from genforge_operator.review.journal import Journal
journal, rater, count = Journal(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(count):
    journal.rate(f"{rater}-{i:05d}.png", "up" if i % 2 else "down", rater=rater, label="circle")
    if i == 0:
        print("started", flush=True)
"""


def test_ratings_undo_and_the_standing_rating_per_image_and_rater(tmp_path):
    journal = Journal(tmp_path / "ratings.jsonl")
    journal.rate("a.png", "up", rater="ann", label="circle")
    journal.rate("a.png", "down", rater="bob", label="circle")
    journal.rate("b.png", "down", rater="ann", label="square")
    journal.rate("a.png", "down", rater="ann", label="circle")   # ann changes her mind
    journal.undo("b.png", rater="ann")
    standing = Journal(tmp_path / "ratings.jsonl").current()     # a restart reads the same state
    assert {k: v["rating"] for k, v in standing.items()} == {("a.png", "ann"): "down", ("a.png", "bob"): "down"}
    assert len(journal.lines()) == 5  # append-only: nothing rewritten
    with pytest.raises(ValueError):
        journal.rate("c.png", "sideways", rater="ann")
    with pytest.raises(ValueError):
        journal.rate("c.png", "up", rater="")


def test_two_raters_writing_at_once_interleave_no_line(tmp_path):
    path = tmp_path / "ratings.jsonl"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), rater, "300"])
               for rater in ("ann", "bob")]
    assert [w.wait(120) for w in writers] == [0, 0]
    lines = path.read_bytes().splitlines()
    assert len(lines) == 600 and all(json.loads(line)["rating"] in ("up", "down") for line in lines)
    assert len(Journal(path).current()) == 600


def test_a_writer_killed_mid_stream_loses_no_acknowledged_rating_and_the_next_writer_goes_on(tmp_path):
    path = tmp_path / "ratings.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "ann", "100000"], stdout=subprocess.PIPE)
    assert writer.stdout.readline().strip() == b"started"
    time.sleep(0.5)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(30)
    before = Journal(path).lines()  # every line complete and parseable
    assert before and all(r["rater"] == "ann" for r in before)
    # A power cut could leave half a line: it is ignored, and the next writer cuts it off.
    with open(path, "ab") as f:
        f.write(b'{"image": "torn.png", "rat')
    assert len(Journal(path).lines()) == len(before)
    Journal(path).rate("after.png", "up", rater="bob")
    lines = Journal(path).lines()
    assert len(lines) == len(before) + 1 and lines[-1]["image"] == "after.png"
    assert b"torn.png" not in path.read_bytes()


def test_parse_and_fold_are_what_the_trainer_reads():
    data = (b'{"image": "a.png", "rating": "up", "rater": "ann"}\n'
            b'{"image": "a.png", "rater": "ann", "undo": true}\n'
            b'{"image": "b.png", "rating": "down", "rater": "ann"}\n'
            b'{"image": "c.png", "ra')
    assert [k for k in fold(parse(data))] == [("b.png", "ann")]
