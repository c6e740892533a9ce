"""Reading and checking user inputs."""

from .examples import ExampleScene, example_scenes
from .images import MAX_PIXELS, load_image

__all__ = ["MAX_PIXELS", "ExampleScene", "example_scenes", "load_image"]
