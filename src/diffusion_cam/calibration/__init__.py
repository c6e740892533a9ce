"""Label-free calibration of Diffusion-CAM for a model, and sanity checks of its maps.

``calibrate`` chooses the map formula, block, score, modules and AKD border
on unlabelled images by the deletion and insertion of the answer's own
words, and writes a profile that ``explain`` / ``bench`` / ``DiffusionCAM``
read back (``profile=``); ``check`` runs sanity checks of a method's maps
(weight randomization, faithfulness against random maps, empty maps).
"""

from .checks import CheckReport, CheckResult, check
from .grid import Config, Grid, build_grid
from .profile import Profile, load_profile, write_profile
from .sweep import Calibration, calibrate

__all__ = ["Calibration", "CheckReport", "CheckResult", "Config", "Grid", "Profile", "build_grid", "calibrate", "check",
           "load_profile", "write_profile"]
