"""Options shared by the sub-commands that build an explanation method."""

from __future__ import annotations

import argparse
from dataclasses import replace

from ..adapters.base import STATES, GenerationConfig
from ..extract import CAM_FORMULAS, SCORES
from ..refine.akd import BORDERS as AKD_BORDERS
from ..generation import REMASKING, SCHEDULES

ALL_MODULES = ("akd", "dacg", "cba", "sicd")


def _kernel(text: str) -> int | str:
    if text == "adaptive":
        return text
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an odd integer nor 'adaptive'") from None
    if k < 1 or k % 2 == 0:
        raise argparse.ArgumentTypeError(f"AKD kernel size must be a positive odd integer, got {k}")
    return k


def at_least(minimum: int):
    """An argparse type: an integer no smaller than ``minimum``."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {n}")
        return n

    return parse


def positive_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not x > 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return x


def _chunk(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a positive integer nor 'auto'") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"chunk size must be at least 1, got {n}")
    return n


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="shapes-tiny",
                   help="built-in model name, hub id, local path, or a family file (.json/.yaml) describing a new "
                        "family (default: shapes-tiny)")
    g.add_argument("--checkpoint", default=None,
                   help="with a family file as --model: the checkpoint folder or hub id to load with it "
                        "(default: the file's first hub id)")
    g.add_argument("--device", default="auto",
                   help="torch device, e.g. cpu, cuda, cuda:1, mps; auto (default): CUDA, then Apple MPS, else CPU")
    g.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="model weights dtype; auto (default): bfloat16 on a GPU that supports it, else float32 "
                        "(the built-in models always float32); CAM arithmetic is always float32")
    g.add_argument("--device-map", default=None, choices=("auto",),
                   help="spread a large checkpoint over the GPUs (and the CPU when they are full) with accelerate's "
                        "device_map='auto', loading it straight onto them instead of into host memory first")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="allow model families whose code ships with the checkpoint to run it")
    g.add_argument("--allow-pickle", action="store_true",
                   help="allow pickle checkpoints (.bin/.pt), which can run code when loaded (default: safetensors only)")


def add_method_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("method")
    g.add_argument("--profile", default=None, metavar="FILE",
                   help="settings from a calibration profile (`diffusion-cam calibrate`); explicit options override it")
    g.add_argument("--layer", type=int, nargs="+", default=None,
                   help="block index(es) to hook (negative allowed; several are averaged); default: the model's")
    g.add_argument("--state", choices=STATES, default=None,
                   help="forward to explain from (default: trajectory; final with --answer)")
    g.add_argument("--score", choices=SCORES, default=None,
                   help="scalar differentiated per token (default: the model's measured choice; logit, the method "
                        "spec's, for other models)")
    g.add_argument("--cam", choices=CAM_FORMULAS, default=None,
                   help="map formula (default: the model's measured choice; poscam, the method spec's, for other models)")
    g.add_argument("--modules", nargs="*", default=None, metavar="MODULE",
                   help="refinement modules: any of akd dacg cba sicd, or none (default: all four, or the profile's)")
    g.add_argument("--sicd-mode", default="reference", choices=("reference", "causal"), help="SICD variant")
    g.add_argument("--akd-kernel", default=3, type=_kernel, help="AKD kernel size (odd int) or 'adaptive'")
    g.add_argument("--akd-border", default=None, choices=AKD_BORDERS,
                   help="AKD window border (default: the model's measured choice; reflect101, the reference's, "
                        "for other models)")
    g.add_argument("--distractor", default=None, help="word contrasted against, for --score contrastive")
    g.add_argument("--chunk-size", type=_chunk, default=16,
                   help="tokens per batched backward, or 'auto' to fit the device's free memory (default: 16)")
    add_generation_options(p)


def add_generation_options(p: argparse.ArgumentParser, sampling: bool = True) -> None:
    """Sampler options; ``sampling=False`` leaves out temperature and seed (bench: greedy only)."""
    g = p.add_argument_group("generation")
    g.add_argument("--gen-length", type=int, default=None, help="answer canvas length (default: the model's)")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    g.add_argument("--block-length", type=int, default=None,
                   help="semi-autoregressive block length (default: the model's)")
    if sampling:
        g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); >0 needs --seed")
        g.add_argument("--seed", type=int, default=None, help="seed for sampling")
    g.add_argument("--remasking", choices=REMASKING, default=None,
                   help="confidence that orders the masked positions (default: the model's)")
    g.add_argument("--schedule", choices=SCHEDULES, default=None,
                   help="tokens per step: linear (LLaDA), timestep (Dream/Dimple), or LaViDa's shift, cosine, "
                        "logit_normal (default: the model's)")
    g.add_argument("--schedule-shift", type=float, default=None,
                   help="factor of the shift schedule (default: the model's, else 3)")
    g.add_argument("--threshold", type=float, default=None,
                   help="confident decoding: commit every position whose confidence exceeds it (default: the model's)")


def generation_config(args: argparse.Namespace, adapter) -> GenerationConfig:
    """The adapter's default sampler with the options the user gave."""
    base = adapter.default_generation
    given = {name: getattr(args, name, None) for name in
             ("gen_length", "steps", "block_length", "remasking", "schedule", "schedule_shift", "threshold")}
    if hasattr(args, "temperature"):
        given.update(temperature=args.temperature, seed=args.seed)
    return replace(base, **{name: value for name, value in given.items() if value is not None})


def method_kwargs(args: argparse.Namespace, adapter) -> dict:
    """Keyword arguments of :func:`diffusion_cam.get_method` from parsed options."""
    if args.modules is None:
        modules = None  # the method's own, or the profile's
    else:
        modules = [] if args.modules in (["none"], ["None"]) else list(args.modules)
    generation = generation_config(args, adapter)
    layer = None if args.layer is None else (args.layer[0] if len(args.layer) == 1 else args.layer)
    state = args.state or ("final" if getattr(args, "answer", None) is not None else None)
    kwargs = dict(layer=layer, score=args.score, cam=args.cam, modules=modules,
                  sicd_mode=args.sicd_mode, akd_kernel=args.akd_kernel, akd_border=args.akd_border,
                  distractor=args.distractor,
                  chunk_size=args.chunk_size, generation=generation)
    if state is not None:  # unset: trajectory, or the profile's (every method's default is trajectory)
        kwargs["state"] = state
    if getattr(args, "profile", None):
        kwargs["profile"] = args.profile
    return kwargs


def method_name(args: argparse.Namespace) -> str:
    """--method, else the profile's method, else diffusion-cam."""
    profile = getattr(args, "profile", None)
    wanted = None
    if profile:
        from ..calibration import load_profile

        wanted = load_profile(profile).settings.get("method", "diffusion-cam")
    if args.method and wanted and args.method != wanted:
        import warnings

        warnings.warn(f"the profile configures {wanted}; {args.method} keeps its own settings", stacklevel=2)
    return args.method or wanted or "diffusion-cam"


def load_adapter(args: argparse.Namespace):
    from ..adapters import load_model

    from ..adapters import available_models
    from ..devices import resolve_device, resolve_dtype

    builtin = {key for e in available_models() for key in (e.name, *e.aliases)}
    options = {}
    device = resolve_device(args.device)
    if getattr(args, "device_map", None):
        options["device_map"] = args.device_map  # the device map places the weights; nothing to move
    else:
        options["device"] = device
    # the built-in models are trained and measured in float32 (half precision empties some of their maps)
    options["dtype"] = resolve_dtype("float32" if args.dtype == "auto" and args.model in builtin else args.dtype, device)
    if args.trust_remote_code:
        options["trust_remote_code"] = True
    if getattr(args, "allow_pickle", False):
        options["allow_pickle"] = True
    if getattr(args, "checkpoint", None):
        from pathlib import Path

        from ..errors import ModelLoadError

        if Path(args.model).suffix not in (".json", ".yaml", ".yml"):
            raise ModelLoadError(f"--checkpoint goes with a family file (.json/.yaml) as --model; {args.model!r} "
                                 "is not one: pass the checkpoint itself as --model")
        options["checkpoint"] = args.checkpoint
    return load_model(args.model, **options)
