"""The one interface definition (hndsr_client.interface) is what every side uses."""

from __future__ import annotations

import numpy as np
import pytest

from hndsr.inference.pipeline import InvalidRequest, SRParams, validate
from hndsr.serving.configs import core_config, orchestrator_config
from hndsr_client.arrays import numpy_dtype, request_arrays
from hndsr_client.interface import (
    DEFAULT_STEPS,
    INPUTS,
    OUTPUTS,
    STREAM_OUTPUTS,
    Limits,
    markdown_table,
)

from .conftest import ROOT


def test_readme_table_is_the_interface():
    assert markdown_table() in (ROOT / "README.md").read_text(), "README interface table is stale"


def test_configs_declare_exactly_the_interface():
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from hndsr.inference.pipeline import Sampling

    def parse(text):
        return text_format.Parse(text, model_config_pb2.ModelConfig())

    for stream, outputs in ((False, OUTPUTS), (True, STREAM_OUTPUTS)):
        config = parse(orchestrator_config("cpu", "v", stream))
        got = [(i.name, model_config_pb2.DataType.Name(i.data_type), tuple(i.dims), i.optional) for i in config.input]
        assert got == [(t.name, t.config_type, t.dims, t.optional) for t in INPUTS]
        assert [o.name for o in config.output] == [t.name for t in outputs]
    core = parse(core_config("cpu", Sampling(1.0, 149)))
    assert [i.name for i in core.input] == [t.name for t in INPUTS] + ["CONTROL"]


def test_request_arrays_follow_the_declared_types():
    arrays = request_arrays(np.zeros((8, 8, 3), np.uint8), 4, 2, 7, 0, ensemble=4)
    assert list(arrays) == [t.name for t in INPUTS]
    for t in INPUTS:
        assert arrays[t.name].dtype == numpy_dtype(t)
    assert arrays["SEED"].tolist() == [7] and arrays["SCALE"].dtype == np.float32
    assert arrays["ENSEMBLE"].tolist() == [4] and arrays["ENSEMBLE"].dtype == np.int32


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("scale", 9.0, "SCALE must be in [2, 8], got 9"),
        ("scale", float("nan"), "SCALE must be in [2, 8], got nan"),
        ("steps", 51, "STEPS must be in [0, 50], got 51"),
        ("eta", 1.5, "ETA must be in [0, 1], got 1.5"),
        ("eta", -0.1, "ETA must be in [0, 1], got -0.1"),
        ("ensemble", 0, "ENSEMBLE must be in [1, 8], got 0"),
        ("ensemble", 9, "ENSEMBLE must be in [1, 8], got 9"),
    ],
)
def test_validation_names_the_field_and_its_declared_range(field, value, message):
    params = SRParams(**{field: value})
    with pytest.raises(InvalidRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate((16, 16, 3), "uint8", params, Limits())


def test_ui_offers_the_default_within_range():
    from hndsr_ui.app import ENSEMBLE_CHOICES, STEP_CHOICES

    steps = next(t for t in INPUTS if t.name == "STEPS")
    assert DEFAULT_STEPS in STEP_CHOICES and max(STEP_CHOICES) <= steps.maximum
    ensemble = next(t for t in INPUTS if t.name == "ENSEMBLE")
    assert ensemble.default in ENSEMBLE_CHOICES and max(ENSEMBLE_CHOICES) <= ensemble.maximum
