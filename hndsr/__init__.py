"""HNDSR: hybrid neural-operator diffusion super-resolution for aerial and satellite imagery."""

__version__ = "0.1.0"
