"""The docs run as written: the tutorial's outputs are checked as a doctest, the README's Python is run."""

import doctest
import re
import warnings
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"


def test_tutorial_runs_and_prints_what_it_shows():
    result = doctest.testfile(str(TUTORIAL), module_relative=False, verbose=False,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 30
    assert result.failed == 0, f"{result.failed} of {result.attempted} tutorial examples differ (run it with -s)"


README = TUTORIAL.parents[1] / "README.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_python_runs_as_written(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    blocks = _python_blocks(text)
    assert blocks, "the README has no Python block"
    monkeypatch.chdir(tmp_path)  # it writes out/...
    namespace: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    ours = [w for w in caught if w.category.__module__.startswith("diffusion_cam")]
    assert not ours, [str(w.message) for w in ours]
    # the answer the snippet's comment promises is the one the model gives
    promised = re.search(r'explain\(scene, "describe the image"\)\s+# "([^"]+)"', text).group(1)
    assert namespace["explainer"].explain(namespace["scene"], "describe the image").answer == promised
    assert (tmp_path / "out" / "scene_2" / "result.json").is_file()
