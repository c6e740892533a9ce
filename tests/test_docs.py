"""The tutorial runs as written: its outputs are checked as a doctest."""

import doctest
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"


def test_tutorial_runs_and_prints_what_it_shows():
    result = doctest.testfile(str(TUTORIAL), module_relative=False, verbose=False,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 30
    assert result.failed == 0, f"{result.failed} of {result.attempted} tutorial examples differ (run it with -s)"
