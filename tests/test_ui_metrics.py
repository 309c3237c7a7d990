from hndsr_ui.triton_metrics import markdown, summary

TEXT = """# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="hndsr",version="1"} 3
nv_inference_request_success{model="hndsr_stream",version="1"} 1
nv_inference_request_success{model="unet",version="1"} 40
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="hndsr",reason="BACKEND",version="1"} 2
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="hndsr",version="1"} 6000000
nv_inference_request_duration_us{model="unet",version="1"} 999
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="hndsr",version="1"} 600
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="unet",version="1"} 2000000
"""


def test_summary_from_triton_counters():
    s = summary(TEXT)
    assert s["requests"] == 6 and s["successes"] == 4 and s["failures"] == 2
    assert s["avg_request_ms"] == 1000.0  # 6 s over 6 requests of the serving models only
    assert s["avg_queue_ms"] == 0.1
    assert s["unet_compute_ms_per_request"] == 500.0  # 2 s over 4 successful requests
    assert "6 (4 / 2)" in markdown(s)
