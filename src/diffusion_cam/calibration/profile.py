"""Calibration profiles: a model's chosen Diffusion-CAM settings in a small JSON file.

A profile written by ``diffusion-cam calibrate`` holds the model it was
calibrated for, the chosen settings, the whole sweep table, the images'
sha256s and the package version.  Only :data:`SETTINGS` are read back as
method options; a profile naming anything else is refused rather than half
applied, and so is a profile made for another model (its maps would be
configured for a network it never saw).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import OutputError, ProfileError

FORMAT = 1
#: the method options a profile may set
SETTINGS = ("method", "cam", "layer", "score", "modules", "akd_border", "state")


@dataclass(frozen=True)
class Profile:
    settings: dict[str, Any]
    model: dict[str, Any]
    source: str  # the file it came from, or "<dict>"
    sha256: str
    data: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """What a result notes about the profile it used."""
        return {"file": self.source, "sha256": self.sha256, "settings": self.settings}

    def check_model(self, adapter) -> None:
        name, weights = self.model.get("name"), self.model.get("weights")
        if name != adapter.name or (weights and adapter.weights_id and weights != adapter.weights_id):
            what = f"model {name!r}" + (f" (weights {str(weights)[:12]}…)" if weights else "")
            raise ProfileError(f"profile {self.source} was calibrated for {what}, not for {adapter.name!r}"
                               + (f" (weights {str(adapter.weights_id)[:12]}…)" if adapter.weights_id else "")
                               + ": calibrate this model with `diffusion-cam calibrate`")

    def options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Method options: the profile's settings, except where ``given`` holds an explicit (non-None) value."""
        out = {k: v for k, v in self.settings.items() if k != "method"}
        out.update({k: v for k, v in given.items() if v is not None})
        return out


def _parse(data: Any, source: str, sha: str) -> Profile:
    if not isinstance(data, dict):
        raise ProfileError(f"profile {source} is not a JSON object")
    settings, model = data.get("settings"), data.get("model")
    if not isinstance(settings, dict) or not isinstance(model, dict) or "name" not in model:
        raise ProfileError(f"profile {source} lacks its 'settings' or its 'model' name: write it with "
                           "`diffusion-cam calibrate`")
    unknown = [k for k in settings if k not in SETTINGS]
    if unknown:
        raise ProfileError(f"profile {source} has unknown setting(s) {', '.join(map(repr, unknown))}; "
                           f"a profile may set {', '.join(SETTINGS)}")
    if data.get("format", FORMAT) != FORMAT:
        raise ProfileError(f"profile {source} has format {data.get('format')!r}; this version reads format {FORMAT}")
    return Profile(dict(settings), dict(model), source, sha, data)


def load_profile(profile: "str | Path | Mapping | Profile") -> Profile:
    """A profile from a file, a dict (the file's content) or a :class:`Profile`."""
    if isinstance(profile, Profile):
        return profile
    if isinstance(profile, Mapping):
        text = json.dumps(profile, sort_keys=True)
        return _parse(dict(profile), "<dict>", hashlib.sha256(text.encode()).hexdigest())
    path = Path(profile)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ProfileError(f"cannot read profile {path}: {err.strerror or err}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProfileError(f"profile {path} is not valid JSON ({err})") from None
    return _parse(data, str(path), hashlib.sha256(raw).hexdigest())


def write_profile(content: Mapping[str, Any], path: "str | Path") -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    except OSError as err:
        raise OutputError(f"cannot write profile {path}: {err.strerror or err}") from None
    return path


def method_options(profile, adapter, method: str, given: Mapping[str, Any]) -> tuple[dict[str, Any], dict]:
    """(options for ``method`` on ``adapter``, the profile's record) after the checks."""
    prof = load_profile(profile)
    prof.check_model(adapter)
    wanted = prof.settings.get("method", method)
    if wanted != method:
        raise ProfileError(f"profile {prof.source} configures method {wanted!r}, not {method!r}")
    return prof.options(given), prof.record()
