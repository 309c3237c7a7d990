"""HNDSR Gradio app: upload, choose scale/steps/seed/self-ensemble, watch server-driven DDIM progress, compare,
download. It talks only to Triton: gRPC streaming (``hndsr_stream``) for inference, HTTP for
health, and Triton's Prometheus endpoint for the metrics panel. Runs offline (no CDN fonts,
analytics off)."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import typer  # noqa: E402
from PIL import Image  # noqa: E402

from hndsr_client.georaster import read_georeference, write_georeferenced  # noqa: E402
from hndsr_client.image_io import IMAGE_SUFFIXES, read_rgb, write_rgb  # noqa: E402
from hndsr_client.interface import DEFAULT_PORTS, DEFAULT_SCALE, DEFAULT_STEPS, SCALE_MAX, SCALE_MIN  # noqa: E402
from hndsr_client.triton_client import (  # noqa: E402
    HNDSRClient,
    HNDSRError,
    InvalidInputError,
    OutputTooLargeError,
    OverloadedError,
    RequestTimeoutError,
    ServerUnavailableError,
)
from hndsr_ui import triton_metrics  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent / "examples"
STEP_CHOICES = [0, 1, 2, 4, 8]
ENSEMBLE_CHOICES = [1, 2, 4, 8]
SCALE_CHOICES = ["2×", "4×", "8×", "custom"]
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
CSS = """
.badge {font-weight: 600; padding: 4px 10px; border-radius: 12px; display: inline-block;}
.online {background: #d1fadf; color: #05603a;} .loading {background: #fef0c7; color: #93370d;}
.offline {background: #fee4e2; color: #912018;}
"""


def user_message(exc: Exception) -> str:
    """A clear message for each failure a person can meet."""
    text = str(exc)
    if isinstance(exc, OutputTooLargeError):
        return f"Too large: {text}"
    if isinstance(exc, InvalidInputError):
        return f"Invalid input: {text}"
    if isinstance(exc, OverloadedError):
        return f"Server overloaded, retry later ({text})"
    if isinstance(exc, RequestTimeoutError):
        return f"Timed out: {text}"
    if isinstance(exc, ServerUnavailableError):
        return f"Server down or unreachable: {text}"
    return f"Request failed: {text}"


class HNDSRApp:
    def __init__(self, grpc_url: str, http_url: str, metrics_url: str, timeout_s: float = 900.0) -> None:
        self.grpc_url, self.http_url, self.metrics_url, self.timeout_s = grpc_url, http_url, metrics_url, timeout_s
        self.out_dir = Path(tempfile.mkdtemp(prefix="hndsr-ui-"))

    def health_badge(self) -> str:
        try:
            with HNDSRClient(self.http_url, "http", timeout_s=3) as client:
                status = client.health()
        except (HNDSRError, OSError):
            return '<span class="badge offline" id="health">● offline</span>'
        if status["ready"] and status["model_ready"]:
            return '<span class="badge online" id="health">● online</span>'
        return '<span class="badge loading" id="health">● loading</span>'

    def metrics_panel(self) -> str:
        try:
            return triton_metrics.markdown(triton_metrics.summary(triton_metrics.fetch(self.metrics_url)))
        except OSError as exc:
            return f"Metrics unavailable: {exc}"

    def preview(self, path: str | None):
        if not path:
            return None
        try:
            return read_rgb(path)
        except Exception as exc:  # noqa: BLE001 - any decoding failure is the user's file
            raise gr.Error(f"Invalid input: cannot read {Path(path).name} as an image ({exc})") from None

    def run(self, path, scale_choice, custom_scale, steps, ensemble, seed, random_seed, progress=gr.Progress()):  # noqa: B008
        if not path:
            raise gr.Error("Invalid input: upload an image first (PNG, JPEG, TIFF/GeoTIFF or AVIF).")
        if Path(path).suffix.lower() not in IMAGE_SUFFIXES:
            raise gr.Error(f"Invalid input: {Path(path).suffix} files are not supported.")
        image = self.preview(path)
        scale = float(custom_scale) if scale_choice == "custom" else float(scale_choice.rstrip("×"))
        steps, ensemble = int(steps), int(ensemble)
        if random_seed or seed is None or seed == "":
            seed = random.randint(0, 2**31 - 1)
        seed = int(seed)
        progress(0, desc="sending to Triton")
        try:
            with HNDSRClient(self.grpc_url, "grpc", timeout_s=self.timeout_s) as client:
                result = client.upscale_streaming(
                    image,
                    scale=scale,
                    steps=steps,
                    seed=seed,
                    ensemble=ensemble,
                    on_progress=lambda done, total: progress((done, total), desc=f"DDIM step {done}/{total}"),
                )
        except HNDSRError as exc:
            raise gr.Error(user_message(exc)) from None
        sr = result.image
        before = np.asarray(Image.fromarray(image).resize((sr.shape[1], sr.shape[0]), Image.BICUBIC))
        stem = f"{Path(path).stem}_hndsr_x{scale:g}_s{steps}_seed{seed}" + (f"_e{ensemble}" if ensemble > 1 else "")
        geo = read_georeference(path)
        if geo is not None:
            out = self.out_dir / f"{stem}.tif"
            write_georeferenced(out, sr, geo.resampled(sr.shape[1] / image.shape[1], sr.shape[0] / image.shape[0]))
        else:
            out = self.out_dir / f"{stem}.png"
            write_rgb(out, sr)
        info = result.info
        rows = [
            ["latency", f"{result.latency_s:.2f} s (server {info['total_ms'] / 1000:.2f} s)"],
            ["scale", f"{info['scale']:g}× ({image.shape[1]}×{image.shape[0]} → {sr.shape[1]}×{sr.shape[0]})"],
            ["steps", str(info["steps"])],
            ["self-ensemble", f"{info['ensemble']} view" + ("s" if info["ensemble"] > 1 else "")],
            ["tiles", str(info["tiles"])],
            ["device", info["device"]],
            ["precision", info["precision"]],
            ["model version", info["model_version"]],
            ["seed", str(seed)],
            ["output", out.name + (" (GeoTIFF, georeference rescaled)" if geo is not None else "")],
        ]
        return (before, sr), str(out), rows, seed

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="HNDSR super-resolution", analytics_enabled=False) as demo:
            with gr.Row():
                gr.Markdown("## HNDSR — super-resolution for aerial and satellite imagery (served by Triton)")
                badge = gr.HTML(self.health_badge(), elem_id="health-badge")
            with gr.Row():
                with gr.Column(scale=1):
                    upload = gr.File(
                        label="Image (drag and drop or click): PNG, JPEG, TIFF/GeoTIFF, AVIF",
                        file_types=list(IMAGE_SUFFIXES),
                        type="filepath",
                        elem_id="upload",
                    )
                    preview = gr.Image(label="Input", interactive=False, height=240, elem_id="preview")
                    scale_choice = gr.Radio(SCALE_CHOICES, value="4×", label="Scale", elem_id="scale")
                    custom_scale = gr.Number(
                        value=DEFAULT_SCALE,
                        minimum=SCALE_MIN,
                        maximum=SCALE_MAX,
                        step=0.1,
                        label=f"Custom scale ({SCALE_MIN:g}–{SCALE_MAX:g})",
                        elem_id="custom-scale",
                    )
                    steps = gr.Radio(
                        STEP_CHOICES,
                        value=DEFAULT_STEPS,
                        label="DDIM steps (0 = fast, most faithful; 1+ add generated fine texture)",
                        elem_id="steps",
                    )
                    ensemble = gr.Radio(
                        ENSEMBLE_CHOICES,
                        value=1,
                        label="Self-ensemble: views averaged (more faithful, N× the time)",
                        elem_id="ensemble",
                    )
                    with gr.Row():
                        seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                        random_seed = gr.Checkbox(value=False, label="Random seed", elem_id="random-seed")
                    run = gr.Button("Super-resolve", variant="primary", elem_id="run")
                    gr.Examples(
                        examples=[[str(p)] for p in sorted(EXAMPLES.iterdir())],
                        inputs=[upload],
                        label="Examples (satellite sample, validation tiles)",
                    )
                with gr.Column(scale=2):
                    slider = gr.ImageSlider(
                        label="Before (bicubic) / after (HNDSR)", elem_id="result", type="numpy", max_height=640
                    )
                    download = gr.DownloadButton("Download full resolution", elem_id="download")
                    meta = gr.Dataframe(
                        headers=["field", "value"], label="Metadata", elem_id="metadata", interactive=False, wrap=True
                    )
                    metrics = gr.Markdown(self.metrics_panel(), elem_id="metrics")
            upload.change(self.preview, upload, preview)
            run.click(
                self.run,
                [upload, scale_choice, custom_scale, steps, ensemble, seed, random_seed],
                [slider, download, meta, seed],
            ).then(self.metrics_panel, None, metrics)
            timer = gr.Timer(3.0)
            timer.tick(self.health_badge, None, badge)
            metrics_timer = gr.Timer(5.0)
            metrics_timer.tick(self.metrics_panel, None, metrics)
        return demo


def launch(grpc_url: str, http_url: str, metrics_url: str, host: str, port: int, block: bool = True):
    app = HNDSRApp(grpc_url, http_url, metrics_url)
    demo = app.build()
    demo.queue(default_concurrency_limit=2)
    demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        show_error=True,
        theme=THEME,
        css=CSS,
        allowed_paths=[str(app.out_dir), str(EXAMPLES)],
        footer_links=[],
        ssr_mode=False,
    )
    return demo


def main() -> None:
    typer.run(_main)


def _main(
    grpc: str = typer.Option(f"127.0.0.1:{DEFAULT_PORTS['grpc']}", help="Triton gRPC address"),
    http: str = typer.Option(f"127.0.0.1:{DEFAULT_PORTS['http']}", help="Triton HTTP address (health)"),
    metrics: str = typer.Option(f"http://127.0.0.1:{DEFAULT_PORTS['metrics']}/metrics", help="Triton metrics URL"),
    host: str = typer.Option("127.0.0.1", help="address the UI binds (0.0.0.0 to expose)"),
    port: int = typer.Option(7860, help="port of the UI"),
) -> None:
    """HNDSR web UI (needs a running Triton with the hndsr models)."""
    launch(grpc, http, metrics, host, port)


if __name__ == "__main__":
    main()
