"""Install lines of the LLaDA-family repositories: in the docs, in the script's help, and in the errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from diffusion_cam.adapters.recipes import FAMILY_TRANSFORMERS, RECIPES, missing_hint, recipe_text
from diffusion_cam.errors import ModelLoadError

ROOT = Path(__file__).resolve().parents[1]


def test_every_family_has_its_lines_in_the_docs():
    docs = (ROOT / "docs" / "models.md").read_text(encoding="utf-8")
    assert set(RECIPES) == {"llada-v", "lavida", "mmada", "lumina-dimoo", "dimple"}
    for recipe in RECIPES.values():
        block = "```bash\n" + "\n".join(recipe.lines()) + "\n```"
        assert block in docs, recipe.family
    assert f'"transformers=={FAMILY_TRANSFORMERS}"' in recipe_text("llada-v")
    assert "pip install pydantic" in recipe_text("lavida") and "pip install typeguard" in recipe_text("mmada")


def test_verify_script_help_states_the_recipe():
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "verify_family_code.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert recipe_text() in res.stdout and f"transformers=={FAMILY_TRANSFORMERS}" in res.stdout


def test_a_missing_family_package_names_the_transformers_release(monkeypatch):
    from diffusion_cam.adapters import llada_family

    with pytest.raises(ModelLoadError) as info:
        llada_family._import("no_such_family_package_xyz", "mmada", "the MMaDA repository")
    message = str(info.value)
    assert "needs the `no_such_family_package_xyz` package" in message
    assert f"mmada's code needs transformers=={FAMILY_TRANSFORMERS}" in message and "typeguard" in message
    import transformers

    assert f"transformers {transformers.__version__} is installed" in missing_hint("lavida")
    assert "pydantic" in missing_hint("lavida") and "plus" not in missing_hint("llada-v")
