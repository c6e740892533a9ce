"""Models shipped with diffusion-cam."""
