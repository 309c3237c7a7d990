"""Each stage exported to ONNX agrees with PyTorch under onnxruntime, and has no DFT op."""

import onnx
import pytest

from hndsr.config import STAGES
from hndsr.serving.export import OPSET, export_stage, parity


@pytest.mark.parametrize("stage", STAGES)
def test_stage_onnx_parity(model, stage, tmp_path):
    path = tmp_path / stage / "model.onnx"
    export_stage(model, stage, path)
    graph = onnx.load(str(path))
    ops = {node.op_type for node in graph.graph.node}
    assert "DFT" not in ops and "STFT" not in ops
    assert graph.opset_import[0].version >= OPSET
    batch_dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param  # dynamic batch
    error = parity(model, stage, path, batch=3)
    print(f"{stage}: max abs error {error:.2e}")
    assert error < 1e-4
