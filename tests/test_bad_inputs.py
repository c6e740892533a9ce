"""Bad inputs, as a table: each must give one clear error, never a traceback or a silent empty result.

Every row is checked through the Python API (a specific exception type from
``diffusion_cam.errors``) and every row that has a command-line form through
the CLI (one line on stderr starting with ``error:``, non-zero exit).  A few
CLI rows run as ``python -m diffusion_cam.cli``; the others run the CLI's
``main`` in forked children of one interpreter (own stdout, stderr and exit
status), so the suite pays the torch import a few times instead of per row.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import diffusion_cam as dc
from diffusion_cam import errors
from diffusion_cam.io import images as image_io
from diffusion_cam.datasets.shapes import generate_scene
from diffusion_cam.safe_load import load_weights, verify_sha256, weight_files
from diffusion_cam.testing import TinyAdapter, random_image, tiny_adapter

#: the default model (the CLI's default too); the tiny random model only where a row is about it
MODEL = "shapes-tiny"
PROMPT = "describe the image"
#: a word neither model can produce (not in their vocabularies), so never in an answer
ABSENT_WORD = "zebra"
#: a Shapes-world scene (96 x 96): every other test image is derived from it
SCENE = generate_scene(7).image


# ------------------------------------------------------------------ inputs
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels but carries only a few rows of data.

    Decoding it would need width*height*3 bytes; refusing it from the header costs nothing.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (3 * width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")


class ZeroHeadAdapter(TinyAdapter):
    """Output head zeroed: every logit is constant in the hidden state, so every gradient is exactly zero."""

    def __init__(self) -> None:
        super().__init__(tiny_adapter()._model)
        with torch.no_grad():
            self._model.head.weight.zero_()


class NanGradAdapter(TinyAdapter):
    """Finite logits whose gradient is NaN: d sqrt(x - x) / dx = inf * 0."""

    def forward(self, inputs, sequence):
        logits = super().forward(inputs, sequence)
        return logits + torch.sqrt(logits - logits)


# Runs the CLI's ``main`` for many argument lists, each in a forked child with its own stdout/stderr
# files and exit status: the interpreter and torch start once instead of once per row.  It also
# registers "zero-head", a tiny model whose gradients are all zero.
CLI_FORKER = """
import json, os, sys, traceback
import torch
from diffusion_cam.adapters import ModelEntry, register_model
from diffusion_cam.cli import main
from diffusion_cam.testing import tiny_adapter


def zero_head(**options):
    adapter = tiny_adapter()
    with torch.no_grad():
        adapter.model.head.weight.zero_()
    return adapter


register_model(ModelEntry(name="zero-head", loader=zero_head, family="tiny-llada-v",
                          description="tiny model with a zeroed output head"))
jobs, codes = json.load(open(sys.argv[1])), {}
for job in jobs:
    pid = os.fork()
    if pid == 0:
        for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        code = 1
        try:
            code = main(job["argv"])
        except SystemExit as err:  # argparse
            code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(int(code))
    codes[job["id"]] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
json.dump(codes, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad_inputs")
    rgb = SCENE
    Image.fromarray(rgb).save(d / "ok.png")
    (d / "zero.png").write_bytes(b"")
    (d / "text.png").write_text("this is not an image\n")
    full = (d / "ok.png").read_bytes()
    (d / "truncated.png").write_bytes(full[: len(full) // 2])
    Image.fromarray(rgb[:1, :1]).save(d / "one.png")
    (d / "huge.png").write_bytes(huge_png_header(20_000, 20_000))
    Image.fromarray(rgb[..., 0]).save(d / "gray.png")
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:4, :4, 3] = 0  # transparent corner
    Image.fromarray(rgba, mode="RGBA").save(d / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(d / "palette.png")
    # the scene's green channel at 16 bits, plus low bits that 8-bit conversion must drop
    g16 = np.minimum(rgb[..., 1].astype(np.int64) * 257 + np.arange(rgb.shape[1]) % 200, 65535).astype(np.uint16)
    Image.fromarray(g16).save(d / "gray16.png")
    (d / "a_file").write_text("a regular file cannot hold a directory\n")
    (d / "cli_forker.py").write_text(CLI_FORKER)
    _small_checkpoints(d)
    torch.save({"w": torch.ones(3)}, d / "model.pt")
    # checkpoint folders of real families, recognised by their config.json: refused before any weight is read
    (d / "llada_v_folder").mkdir()
    (d / "llada_v_folder" / "config.json").write_text('{"model_type": "llava_llada"}')
    (d / "gemma_pickle").mkdir()
    (d / "gemma_pickle" / "config.json").write_text('{"model_type": "diffusion_gemma"}')
    torch.save({"w": torch.ones(3)}, d / "gemma_pickle" / "pytorch_model.bin")
    return d


def _small_checkpoints(d: Path) -> None:
    """A copy of the shipped shapes-tiny weights, plus a truncated and a bit-flipped copy."""
    from diffusion_cam.models.shapes_tiny import WEIGHTS_DIR

    shutil.copytree(WEIGHTS_DIR, d / "ckpt_ok")
    for damage in ("truncated", "flipped"):
        shutil.copytree(d / "ckpt_ok", d / f"ckpt_{damage}")
        weights = d / f"ckpt_{damage}" / "model.safetensors"
        data = bytearray(weights.read_bytes())
        if damage == "truncated":
            data = data[: len(data) - 1000]
        else:
            data[-100] ^= 0xFF
        weights.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def adapter():
    return dc.load_model(MODEL)


def _explain(adapter, image, prompt=PROMPT, **options):
    targets = options.pop("targets", None)
    return dc.get_method("diffusion-cam", adapter, **options).explain(image, prompt, targets=targets)


# -------------------------------------------------------------- the table
@dataclass(frozen=True)
class Row:
    id: str
    error: type[Exception] | None  # None: the input is accepted
    match: str  # a fragment the message must contain (case-insensitive)
    api: Callable | None  # (files, adapter) -> anything; must raise ``error``
    cli: tuple[str, ...] | None  # argv after "diffusion-cam", with {d} the files directory
    entry: bool = False  # run through "python -m diffusion_cam.cli" (a fresh interpreter), not a fork


LONG_PROMPT = " ".join(["describe"] * 600)
OK = ("explain", "{d}/ok.png", "--prompt", PROMPT)  # the CLI call of most rows, plus the row's own options

ROWS = [
    # images
    Row("missing_file", errors.ImageLoadError, "no such file",
        lambda d, a: _explain(a, d / "missing.png"), ("explain", "{d}/missing.png", "--prompt", PROMPT)),
    Row("zero_byte_file", errors.ImageLoadError, "empty",
        lambda d, a: _explain(a, d / "zero.png"), ("explain", "{d}/zero.png", "--prompt", PROMPT)),
    Row("text_named_png", errors.ImageLoadError, "cannot decode",
        lambda d, a: _explain(a, d / "text.png"), ("explain", "{d}/text.png", "--prompt", PROMPT)),
    Row("truncated_png", errors.ImageLoadError, "cannot decode",
        lambda d, a: _explain(a, d / "truncated.png"), ("explain", "{d}/truncated.png", "--prompt", PROMPT)),
    Row("one_pixel", errors.ImageLoadError, "1x1",
        lambda d, a: _explain(a, d / "one.png"), ("explain", "{d}/one.png", "--prompt", PROMPT)),
    Row("huge_20000x20000", errors.ImageLoadError, "too large",
        lambda d, a: _explain(a, d / "huge.png"), ("explain", "{d}/huge.png", "--prompt", PROMPT), entry=True),
    Row("directory_as_image", errors.ImageLoadError, "directory",
        lambda d, a: _explain(a, d), ("explain", "{d}", "--prompt", PROMPT)),
    Row("bad_array_shape", errors.ImageLoadError, "shape",
        lambda d, a: _explain(a, np.zeros((8, 8, 2), np.uint8)), None),
    Row("array_values_out_of_range", errors.ImageLoadError, "values -300..-48; expected 0..255",
        lambda d, a: _explain(a, np.full((8, 8, 3), -300, np.int16) + np.arange(8, dtype=np.int16)[:, None, None] * 36),
        None),
    # prompts and targets
    Row("empty_prompt", errors.PromptError, "prompt is empty",
        lambda d, a: _explain(a, d / "ok.png", "   "), ("explain", "{d}/ok.png", "--prompt", "")),
    Row("prompt_over_context", errors.PromptError, "context",
        lambda d, a: _explain(a, d / "ok.png", LONG_PROMPT), ("explain", "{d}/ok.png", "--prompt", LONG_PROMPT)),
    Row("prompt_unknown_words", errors.PromptError, "vocabulary",
        lambda d, a: _explain(a, d / "ok.png", "describe the zebra"), None),
    Row("target_word_not_in_answer", errors.TargetError, "not in the answer",
        lambda d, a: _explain(a, d / "ok.png", targets=[ABSENT_WORD]), (*OK, "--targets", ABSENT_WORD)),
    Row("target_index_out_of_range", errors.TargetError, "out of range",
        lambda d, a: _explain(a, d / "ok.png", targets=[99]), (*OK, "--targets", "99")),
    Row("no_targets", errors.TargetError, "no target given",
        lambda d, a: _explain(a, d / "ok.png", targets=[]), None),
    Row("fractional_target", errors.TargetError, "neither a token index nor a word",
        lambda d, a: _explain(a, d / "ok.png", targets=[1.5]), None),
    Row("distractor_not_in_vocabulary", errors.TargetError, "vocabulary",
        lambda d, a: _explain(a, d / "ok.png", score="contrastive", distractor=ABSENT_WORD), None),
    # layers and names
    Row("layer_out_of_range", errors.LayerError, "out of range",
        lambda d, a: _explain(a, d / "ok.png", layer=99), (*OK, "--layer", "99")),
    Row("layer_negative_out_of_range", errors.LayerError, "out of range",
        lambda d, a: _explain(a, d / "ok.png", layer=[1, -9]), (*OK, "--layer", "1", "-9")),
    Row("layer_as_text", errors.LayerError, "not a block index",
        lambda d, a: _explain(a, d / "ok.png", layer="12"), None),
    Row("layer_as_float", errors.LayerError, "not a block index",
        lambda d, a: _explain(a, d / "ok.png", layer=1.0), None),
    Row("unknown_model", errors.UnknownNameError, "unknown model",
        lambda d, a: dc.load_model("no-such-model"), (*OK, "--model", "no-such-model")),
    Row("unknown_method", errors.UnknownNameError, "unknown method",
        lambda d, a: dc.get_method("no-such-method", a), (*OK, "--method", "no-such-method")),
    Row("unknown_module", errors.UnknownNameError, "unknown refinement module",
        lambda d, a: _explain(a, d / "ok.png", modules=["akd", "blur"]), (*OK, "--modules", "akd", "blur")),
    Row("unknown_score", errors.UnknownNameError, "unknown score",
        lambda d, a: _explain(a, d / "ok.png", score="entropy"), None),
    Row("unknown_state", errors.UnknownNameError, "unknown state",
        lambda d, a: _explain(a, d / "ok.png", state="middle"), None),
    # models and weights
    Row("unknown_device", errors.ModelLoadError, "device",
        lambda d, a: dc.load_model(MODEL, device="no-such-device"), (*OK, "--device", "no-such-device")),
    Row("remote_code_without_flag", errors.ModelLoadError, "--trust-remote-code",
        lambda d, a: dc.load_model("llada-v"), (*OK, "--model", "llada-v"), entry=True),
    Row("remote_code_local_folder", errors.ModelLoadError, "trust_remote_code",
        lambda d, a: dc.load_model(str(d / "llada_v_folder")), (*OK, "--model", "{d}/llada_v_folder")),
    Row("pickle_only_checkpoint", errors.ModelLoadError, "pickle weights only",
        lambda d, a: dc.load_model(str(d / "gemma_pickle")), (*OK, "--model", "{d}/gemma_pickle")),
    Row("truncated_weights", errors.ModelLoadError, "sha256",
        lambda d, a: dc.load_model("shapes-tiny", weights_dir=d / "ckpt_truncated"), None),
    Row("corrupted_weights", errors.ModelLoadError, "sha256",
        lambda d, a: dc.load_model("shapes-tiny", weights_dir=d / "ckpt_flipped"), None),
    Row("missing_weights", errors.ModelLoadError, "not found",
        lambda d, a: dc.load_model("shapes-tiny", weights_dir=d / "nowhere"), None),
    Row("pickle_checkpoint", errors.ModelLoadError, "refusing to load pickle",
        lambda d, a: load_weights(d / "model.pt"), None),
    # output and generation
    Row("unwritable_out", errors.OutputError, "cannot write",
        lambda d, a: _explain(a, d / "ok.png").save(d / "a_file" / "sub"), (*OK, "--out", "{d}/a_file/sub")),
    Row("sampling_without_seed", errors.GenerationError, "seed",
        lambda d, a: _explain(a, d / "ok.png", generation=dc.GenerationConfig(gen_length=8, temperature=0.7)),
        (*OK, "--temperature", "0.7")),
    Row("block_length_not_dividing", errors.GenerationError, "must divide",
        lambda d, a: _explain(a, d / "ok.png", generation=dc.GenerationConfig(gen_length=8, block_length=5)),
        (*OK, "--gen-length", "8", "--block-length", "5")),
    Row("steps_not_a_multiple_of_blocks", errors.GenerationError, "multiple",
        lambda d, a: _explain(a, d / "ok.png", generation=dc.GenerationConfig(gen_length=8, block_length=4, steps=3)),
        None),
    # converted and accepted
    Row("grayscale", None, "", lambda d, a: _explain(a, d / "gray.png"),
        ("explain", "{d}/gray.png", "--prompt", PROMPT, "--no-pictures")),
    Row("rgba", None, "", lambda d, a: _explain(a, d / "rgba.png"),
        ("explain", "{d}/rgba.png", "--prompt", PROMPT, "--no-pictures")),
    Row("palette", None, "", lambda d, a: _explain(a, d / "palette.png"),
        ("explain", "{d}/palette.png", "--prompt", PROMPT, "--no-pictures")),
    Row("loading_flags_on_a_builtin_model", None, "",
        lambda d, a: _explain(dc.load_model(MODEL, allow_pickle=True, trust_remote_code=True), d / "ok.png"),
        (*OK, "--allow-pickle", "--trust-remote-code", "--no-pictures")),
    Row("loading_flags_on_the_test_model", None, "",
        lambda d, a: _explain(dc.load_model("tiny-random", allow_pickle=True, trust_remote_code=True), d / "ok.png"),
        (*OK, "--model", "tiny-random", "--allow-pickle", "--trust-remote-code", "--no-pictures")),
    Row("half_precision_weights", None, "",
        lambda d, a: _explain(dc.load_model(MODEL, dtype="bfloat16"), d / "ok.png"),
        (*OK, "--dtype", "float16", "--no-pictures")),
    Row("gray_16bit", None, "", lambda d, a: _explain(a, d / "gray16.png"),
        ("explain", "{d}/gray16.png", "--prompt", PROMPT), entry=True),
]

CLI_ROWS = [r for r in ROWS if r.cli is not None]


def _cli_argv(row: Row, d: Path) -> list[str]:
    args = [a.replace("{d}", str(d)) for a in row.cli]
    if "--model" not in args and MODEL != "shapes-tiny":  # shapes-tiny is the CLI's default
        args += ["--model", MODEL]
    if "--out" not in args:
        args += ["--out", str(d / f"out_{row.id}")]
    return args


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DIFFUSION_CAM_DEBUG"}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def cli_results(files) -> dict[str, subprocess.CompletedProcess]:
    """Exit status, stdout and stderr of every CLI row (and a zero-gradient run).

    Rows marked ``entry`` run as ``python -m diffusion_cam.cli``; the others
    run as forked children of one interpreter (``CLI_FORKER``).  All start at once.
    """
    jobs = [{"id": r.id, "argv": _cli_argv(r, files), "stdout": str(files / f"{r.id}.out"),
             "stderr": str(files / f"{r.id}.err")} for r in CLI_ROWS if not r.entry]
    jobs.append({"id": "zero_gradients", "argv": ["explain", str(files / "ok.png"), "--prompt", PROMPT, "--model",
                                                  "zero-head", "--out", str(files / "out_zero"), "--no-pictures"],
                 "stdout": str(files / "zero.out"), "stderr": str(files / "zero.err")})
    (files / "jobs.json").write_text(json.dumps(jobs))
    procs = {r.id: subprocess.Popen([sys.executable, "-m", "diffusion_cam.cli", *_cli_argv(r, files)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=files)
             for r in CLI_ROWS if r.entry}
    forker = subprocess.Popen([sys.executable, str(files / "cli_forker.py"), str(files / "jobs.json"),
                               str(files / "codes.json")], env=_env(), cwd=files, stderr=subprocess.PIPE, text=True)
    results = {}
    try:
        for key, proc in procs.items():
            out, err = proc.communicate(timeout=900)
            results[key] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        _, forker_err = forker.communicate(timeout=900)
    finally:
        for proc in [*procs.values(), forker]:
            if proc.poll() is None:
                proc.kill()
    assert forker.returncode == 0, forker_err
    codes = json.loads((files / "codes.json").read_text())
    for job in jobs:
        results[job["id"]] = subprocess.CompletedProcess(
            job["argv"], codes[job["id"]], Path(job["stdout"]).read_text(), Path(job["stderr"]).read_text())
    return results


#: a grey copy of a Shapes scene is converted and explained, with the built-in model's out-of-world warning
GREY_ROWS = ("grayscale", "gray_16bit")
GREY_WARNING = "shows no object in the Shapes colours"


def test_every_error_class_reaches_the_cli():
    classes = {r.error for r in CLI_ROWS if r.error is not None}
    wanted = {errors.ImageLoadError, errors.PromptError, errors.TargetError, errors.LayerError,
              errors.UnknownNameError, errors.ModelLoadError, errors.OutputError, errors.GenerationError}
    assert wanted <= classes


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_api(row, files, adapter):
    if row.error is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error", errors.DegenerateMapWarning)  # a converted image must give real maps
            if row.id in GREY_ROWS:
                with pytest.warns(errors.OutOfWorldWarning, match=GREY_WARNING):
                    exp = row.api(files, adapter)
            else:
                exp = row.api(files, adapter)
        assert exp.maps.shape[0] == len(exp.tokens) > 0
        assert np.isfinite(exp.maps).all() and exp.maps.min() >= 0 and exp.maps.max() <= 1
        return
    with pytest.raises(row.error) as info:
        row.api(files, adapter)
    message = str(info.value)
    assert row.match.lower() in message.lower()
    assert "\n" not in message


@pytest.mark.parametrize("row", CLI_ROWS, ids=[r.id for r in CLI_ROWS])
def test_cli(row, files, cli_results):
    res = cli_results[row.id]
    assert "Traceback" not in res.stderr
    if row.error is None:
        assert res.returncode == 0, res.stderr
        if row.id in GREY_ROWS:
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("warning: ") and GREY_WARNING in lines[0], res.stderr
        else:
            assert not res.stderr.strip(), res.stderr  # no warning either: converted images give real maps
        doc = json.loads((files / f"out_{row.id}" / "result.json").read_text())
        assert doc["image_size"] == list(SCENE.shape[:2]) and doc["tokens"]
        if "--model" not in row.cli:
            assert doc["model"] == MODEL
        assert not any(t["degenerate"] for t in doc["tokens"])
        return
    lines = res.stderr.strip().splitlines()
    assert res.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert row.match.lower() in lines[0].lower()
    assert "internal error" not in lines[0]
    assert not list((files / f"out_{row.id}").glob("*.npz"))  # no partial result left behind


# ------------------------------------------------------- images in detail
def test_huge_image_is_refused_before_decoding(files, monkeypatch):
    """The size check reads the header only: decoding would need 1.2 GB."""

    def no_decode(self, *args, **kwargs):
        raise AssertionError("the image was decoded before its size was checked")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    with pytest.raises(errors.ImageLoadError, match="too large"):
        dc.load_image(files / "huge.png")
    # between our limit and PIL's own bomb limit: refused by our check, from the header
    (files / "big.png").write_bytes(huge_png_header(9000, 9000))
    with pytest.raises(errors.ImageLoadError, match="81,000,000 pixels, above the limit"):
        dc.load_image(files / "big.png")
    big = np.broadcast_to(np.zeros(1, np.uint8), (9000, 9000, 3))  # no memory behind it
    with pytest.raises(errors.ImageLoadError, match="above the limit"):
        dc.load_image(big)
    assert image_io.MAX_PIXELS < 9000 * 9000


def test_converted_images_keep_their_pixels(files):
    rgb = SCENE
    gray = dc.load_image(files / "gray.png")
    assert gray.dtype == np.uint8 and gray.shape == (*SCENE.shape[:2], 3)
    assert np.array_equal(gray[..., 0], rgb[..., 0]) and np.array_equal(gray[..., 1], gray[..., 2])
    rgba = dc.load_image(files / "rgba.png")
    assert np.array_equal(rgba[:4, :4], np.full((4, 4, 3), 255, np.uint8))  # transparent -> white
    assert np.array_equal(rgba[8:, 8:], rgb[8:, 8:])
    pal = dc.load_image(files / "palette.png")
    expected = np.asarray(Image.open(files / "palette.png").convert("RGB"))
    assert np.array_equal(pal, expected)
    g16 = dc.load_image(files / "gray16.png")
    src = np.asarray(Image.open(files / "gray16.png"), dtype=np.float64)
    # 16-bit keeps its brightness (x / 257), it is not stretched to its own range
    assert np.abs(g16[..., 0].astype(np.float64) - src / 257.0).max() <= 0.5
    dark = np.full((8, 8), 1000, np.uint16)
    Image.fromarray(dark).save(files / "dark16.png")
    assert dc.load_image(files / "dark16.png").max() == 4


# ---------------------------------------------- degenerate (NaN/zero) maps
@pytest.mark.parametrize("make", [ZeroHeadAdapter, NanGradAdapter], ids=["all_zero_gradients", "nan_gradients"])
def test_degenerate_gradients_give_flagged_zero_maps(make, image):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with np.errstate(all="raise"):  # no division by zero, no invalid value anywhere in numpy
            exp = dc.DiffusionCAM(make()).explain(image, PROMPT)
    assert len(exp.tokens) > 0 and all(exp.degenerate)
    for maps in (exp.maps, exp.raw_maps, exp.grid_maps, exp.raw_grid_maps):
        assert np.isfinite(maps).all() and not maps.any()
    flagged = [w for w in caught if issubclass(w.category, errors.DegenerateMapWarning)]
    assert flagged and "no positive evidence" in str(flagged[0].message)


def test_half_precision_logprob_names_its_vanishing_gradient_and_logodds_keeps_the_maps(files):
    # in float16 the logprob gradient of a confident word underflows to zero; the warning says
    # why and what to use, and the default log-odds score gives every word a map
    half = dc.load_model(MODEL, dtype="float16")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prob = dc.DiffusionCAM(half, score="logprob").explain(files / "ok.png", PROMPT)
    flagged = [str(w.message) for w in caught if issubclass(w.category, errors.DegenerateMapWarning)]
    assert any(prob.degenerate) and len(flagged) == sum(prob.degenerate)
    assert all("score='logodds'" in m for m in flagged)
    with warnings.catch_warnings():
        warnings.simplefilter("error", errors.DegenerateMapWarning)
        odds = dc.DiffusionCAM(half).explain(files / "ok.png", PROMPT)
    assert odds.tokens == prob.tokens and not any(odds.degenerate) and all(m.max() > 0 for m in odds.grid_maps)


def test_cli_degenerate_map_is_a_warning_not_an_error(files, cli_results):
    res = cli_results["zero_gradients"]
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines and all(line.startswith("warning: ") for line in lines)
    doc = json.loads((files / "out_zero" / "result.json").read_text())
    assert doc["tokens"] and all(t["degenerate"] for t in doc["tokens"])
    maps = dc.Explanation.load(files / "out_zero").maps
    assert np.isfinite(maps).all() and not maps.any()


# ------------------------------------------------------------- weights
def _save_small_safetensors(path: Path) -> bytes:
    from safetensors.torch import save_file

    save_file({"w": torch.arange(4096, dtype=torch.float32).reshape(64, 64), "b": torch.ones(64)}, str(path))
    return path.read_bytes()


def test_truncated_and_corrupted_safetensors(tmp_path):
    good = tmp_path / "good.safetensors"
    data = _save_small_safetensors(good)
    digest = hashlib.sha256(data).hexdigest()
    assert verify_sha256(good, digest) == digest
    assert torch.equal(load_weights(good, expected_sha256=digest)["b"], torch.ones(64))

    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(errors.ModelLoadError, match="looks truncated") as info:
        load_weights(cut)
    assert str(cut) in str(info.value)
    with pytest.raises(errors.ModelLoadError) as info:
        verify_sha256(cut, digest)
    msg = str(info.value)
    assert str(cut) in msg and digest in msg and hashlib.sha256(cut.read_bytes()).hexdigest() in msg
    assert "looks truncated" in msg

    flipped = bytearray(data)
    flipped[-10] ^= 0xFF  # inside the tensor data: only the digest can tell
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(errors.ModelLoadError, match="corrupted"):
        load_weights(bad, expected_sha256=digest)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(200))
    with pytest.raises(errors.ModelLoadError, match="cannot read safetensors"):
        load_weights(garbage)
    with pytest.raises(errors.ModelLoadError, match="does not exist"):
        load_weights(tmp_path / "absent.safetensors")
    with pytest.raises(errors.ModelLoadError, match="unknown weights format"):
        load_weights(tmp_path / "weights.npz")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_checkpoints_need_an_explicit_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = {"w": torch.ones(3)}
    for suffix in (".bin", ".pt", ".pth", ".ckpt"):
        path = tmp_path / f"model{suffix}"
        torch.save(state, path)
        with pytest.raises(errors.ModelLoadError, match="refusing to load pickle"):
            load_weights(path)
        assert torch.equal(load_weights(path, allow_pickle=True)["w"], state["w"])
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"w": _RunsCode()}, f)
    with pytest.raises(errors.ModelLoadError, match="weights_only"):
        load_weights(evil, allow_pickle=True)  # weights_only=True never calls os.system
    assert not (tmp_path / "pwned").exists()

    pickled_dir = tmp_path / "ckpt"
    pickled_dir.mkdir()
    torch.save(state, pickled_dir / "pytorch_model.bin")
    with pytest.raises(errors.ModelLoadError, match="pickle weights only"):
        weight_files(pickled_dir)
    assert weight_files(pickled_dir, allow_pickle=True) == [pickled_dir / "pytorch_model.bin"]
    _save_small_safetensors(pickled_dir / "model.safetensors")
    assert weight_files(pickled_dir) == [pickled_dir / "model.safetensors"]


def test_built_in_loader_messages(files, adapter):
    """The shapes-tiny loader names the damaged file, both digests and a truncation; the intact copy loads."""
    copy = dc.load_model("shapes-tiny", weights_dir=files / "ckpt_ok")
    assert all(torch.equal(p, q) for p, q in zip(copy.model.state_dict().values(), adapter.model.state_dict().values()))
    recorded = json.loads((files / "ckpt_ok" / "config.json").read_text())["weights_sha256"]
    for damage in ("truncated", "flipped"):
        weights = files / f"ckpt_{damage}" / "model.safetensors"
        with pytest.raises(errors.ModelLoadError) as info:
            dc.load_model("shapes-tiny", weights_dir=files / f"ckpt_{damage}")
        message = str(info.value)
        assert str(weights) in message and recorded in message
        assert hashlib.sha256(weights.read_bytes()).hexdigest() in message
        assert ("looks truncated" in message) == (damage == "truncated")


# ---------------------------------------------------- output file names
HOSTILE_TOKENS = ["../../x", "/abs", "con", "a\x00b", "w" * 500, "..", "", "nul.txt", "a/b\\c", "é字", " ", ".hidden"]


def test_token_text_never_escapes_the_output_directory(tmp_path):
    from diffusion_cam import report

    n = len(HOSTILE_TOKENS)
    rgb = random_image(1)
    maps = np.random.default_rng(0).random((n, 48, 48)).astype(np.float32)
    grid = np.random.default_rng(1).random((n, 6, 6)).astype(np.float32)
    exp = dc.Explanation(
        answer=" ".join(HOSTILE_TOKENS), tokens=list(HOSTILE_TOKENS), token_ids=list(range(n)),
        token_indices=list(range(n)), steps=list(range(n)), maps=maps, raw_maps=maps, grid_maps=grid,
        raw_grid_maps=grid, image=rgb, prompt=PROMPT, scores=[0.0] * n, degenerate=[False] * n,
        trajectory=[{"step": i, "committed": [i], "ids": [i]} for i in range(n)], answer_tokens=list(HOSTILE_TOKENS),
    )
    out = tmp_path / "nested" / "out"
    out.mkdir(parents=True)
    written = report.write_pictures(exp, out)
    root = out.resolve()
    everything = {p.resolve() for p in tmp_path.rglob("*") if p.is_file()}
    assert everything and all(root in p.parents for p in everything)  # nothing outside out/
    names = [Path(w).name for w in written]
    assert len(set(names)) == len(names)
    for name in names:
        assert "/" not in name and "\\" not in name and "\x00" not in name and len(name) <= 100
    overlays = [w for w in names if w.startswith("overlay")]
    assert len(overlays) == n  # one distinct file per token, none lost to a clash


# ------------------------------------------------------------ CLI contract
class OutOfMemoryError(RuntimeError):
    """Stands for torch.cuda.OutOfMemoryError (matched by name, as the CLI does)."""


@pytest.mark.parametrize("raised, code, expected", [
    (errors.PromptError("first line\nsecond line"), 2, "error: first line second line"),
    (RuntimeError("shape mismatch\n  at layer 3"), 1, "error: internal error RuntimeError: shape mismatch at layer 3"),
    (OutOfMemoryError("CUDA out of memory.\nTried to allocate 2 GiB"), 1, "error: out of accelerator memory"),
    (MemoryError(), 1, "error: out of memory"),
], ids=["multi_line_error", "unexpected_error", "accelerator_oom", "host_oom"])
def test_cli_prints_one_line_whatever_the_message(raised, code, expected, monkeypatch, capsys):
    from diffusion_cam import cli
    from diffusion_cam.cli import explain

    def fail(args):
        raise raised

    monkeypatch.setattr(explain, "run", fail)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main() replaces it; restore after
    monkeypatch.delenv("DIFFUSION_CAM_DEBUG", raising=False)
    assert cli.main(["explain", "x.png", "--prompt", PROMPT]) == code
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected)
