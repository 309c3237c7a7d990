"""HNDSR network stages: autoencoder, FNO prior and diffusion UNet."""
