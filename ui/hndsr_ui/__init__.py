"""Gradio web UI for HNDSR: talks only to Triton (gRPC for inference, HTTP for health and metrics)."""
