"""The progress bar of long steps shows how many items are done out of how many."""

from __future__ import annotations

import pytest

from llmprep.training.progress import progress


def test_the_bar_counts_what_the_work_reports(capsys):
    with progress(110, "answering") as advance:
        for batch in [8] * 13 + [6]:
            advance(batch)
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("answering") and "110/110" in last


@pytest.mark.parametrize(("done", "shown"), [((8, 8, 8), "24/110"), ((), "0/110")])
def test_a_bar_stopped_early_shows_the_true_count(capsys, done, shown):
    with pytest.raises(KeyboardInterrupt), progress(110, "answering") as advance:
        for batch in done:
            advance(batch)
        raise KeyboardInterrupt
    assert shown in capsys.readouterr().out
