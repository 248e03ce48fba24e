"""What every job shares on the command line (schemas/cli.py)."""
import logging

from schemas.cli import Progress


def test_a_long_stage_logs_what_it_has_done_of_how_many_and_the_rate(caplog):
    log = logging.getLogger("a long stage")
    with caplog.at_level(logging.INFO, logger="a long stage"):
        progress = Progress(log, "decoding", total=3, every_s=0.0)
        progress.add()
        progress.add(2)
        quiet = Progress(log, "quiet", every_s=3600.0)
        quiet.add()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("decoding: 1 of 3 done, ") and lines[0].endswith("/s")
    assert lines[1].startswith("decoding: 3 of 3 done, ")
    assert not any(line.startswith("quiet") for line in lines)  # not before its interval
