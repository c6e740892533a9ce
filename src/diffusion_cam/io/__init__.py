"""Reading and checking user inputs."""

from .images import MAX_PIXELS, load_image

__all__ = ["MAX_PIXELS", "load_image"]
