"""How to install the LLaDA-family repositories' code next to diffusion-cam.

Their model code ships in their GitHub repositories, not on PyPI, and was
written for transformers 4.x: it runs with ``transformers==4.46.3`` and not
with the transformers 5 of the ``hf`` extra, so a family gets its own
environment.  ``benchmarks/verify_family_code.py`` runs each family's code
in an environment made by these lines (see docs/models.md).
"""

from __future__ import annotations

from dataclasses import dataclass

#: the transformers release the families' code runs with
FAMILY_TRANSFORMERS = "4.46.3"
#: run in a diffusion-cam checkout: the library without its ``hf`` extra, which asks for transformers 5
BASE = (f'pip install -e . "transformers=={FAMILY_TRANSFORMERS}" accelerate einops',)


@dataclass(frozen=True)
class Recipe:
    family: str  # as in the family file
    repo: str  # git URL of the family's code
    python_path: str | None  # the folder to put on PYTHONPATH, relative to the clone (None: nothing to import)
    pip: tuple[str, ...]  # install lines after the clone

    def lines(self) -> list[str]:
        folder = self.repo.rstrip("/").rsplit("/", 1)[-1]
        path = [] if self.python_path is None else [f"export PYTHONPATH=$PWD/{folder}{self.python_path}:$PYTHONPATH"]
        return [*self.pip[:1], f"git clone {self.repo}", *self.pip[1:], *path]


RECIPES = {r.family: r for r in (
    Recipe("llada-v", "https://github.com/ML-GSAI/LLaDA-V", "/train", BASE),
    Recipe("lavida", "https://github.com/jacklishufan/LaViDa", "", BASE + (
        "pip install pydantic",
        # LaViDa's llava package imports deepspeed; the pieces it imports install without their build
        "pip install --no-deps deepspeed hjson ninja py-cpuinfo msgpack",
    )),
    Recipe("mmada", "https://github.com/Gen-Verse/MMaDA", "", BASE + (
        "pip install typeguard",
        "pip install --no-deps diffusers==0.31.0 omegaconf antlr4-python3-runtime==4.9.3 jaxtyping wadler_lindig",
    )),
    Recipe("lumina-dimoo", "https://github.com/Alpha-VLLM/Lumina-DiMOO", "", BASE + (
        "pip install --no-deps diffusers==0.31.0",
    )),
    # the checkpoint ships Dimple's code (trust_remote_code); the clone gives verify_family_code.py the same code
    Recipe("dimple", "https://github.com/yu-rp/Dimple", None, BASE),
)}


def recipe_text(family: str | None = None) -> str:
    """The install lines of one family (every family when None), as a shell snippet."""
    chosen = [RECIPES[family]] if family else list(RECIPES.values())
    return "\n\n".join(f"# {r.family}\n" + "\n".join(r.lines()) for r in chosen)


def missing_hint(family: str) -> str:
    """One sentence for an error: the transformers release and the extra packages the family's code needs."""
    try:
        import transformers

        installed = f"transformers {transformers.__version__} is installed"
    except ImportError:
        installed = "transformers is not installed"
    r = RECIPES.get(family)
    extra = ""
    if r is not None:
        names = [w for line in r.pip[len(BASE):] for w in line.split()[2:] if not w.startswith("-")]
        if names:
            extra = f" plus {', '.join(n.split('==')[0] for n in names)}"
    return (f"{family}'s code needs transformers=={FAMILY_TRANSFORMERS} ({installed}){extra}; "
            "see the family's install lines in docs/models.md")
