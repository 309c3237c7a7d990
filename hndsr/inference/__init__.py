"""Inference: the pipeline (tiling, DDIM loop, texture gate, de-gridding) shared by PyTorch and the Triton core."""
