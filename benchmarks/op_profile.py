"""ONNX Runtime kernel time per op type: where a CPU artifact spends its time."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


def ort_op_profile(artifact_dir: Path, batch: np.ndarray, runs: int = 5) -> list[dict]:
    """ONNX Runtime kernel time per op type over the artifact's graphs (CPU, one batch): the median over
    `runs` profiled runs after one warm-up run (which allocates and prepacks weights), so a run slowed
    by other processes does not decide the ranking."""
    import json

    import onnxruntime as ort

    from maskclip_runtime.contract.artifact import load_artifact

    artifact = load_artifact(artifact_dir)
    per_run: list[dict[str, float]] = [{} for _ in range(runs)]
    tensors = {"image": batch}
    for graph in artifact.graphs:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="ort-profile-")) / graph.name)
        session = ort.InferenceSession(str(artifact.file(graph.file)), options, providers=["CPUExecutionProvider"])
        feed = {i.name: tensors[i.name] for i in session.get_inputs()}
        for _ in range(runs + 1):
            outputs = session.run(None, feed)
        tensors.update({o.name: v for o, v in zip(session.get_outputs(), outputs, strict=True)})
        events = json.loads(Path(session.end_profiling()).read_text())
        starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")[1:]  # skip the warm-up
        for event in events:
            if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time") or event["ts"] < starts[0]:
                continue
            run = sum(event["ts"] >= start for start in starts) - 1
            op = event.get("args", {}).get("op_name", "?")
            per_run[run][op] = per_run[run].get(op, 0.0) + event["dur"] / 1e3
    ops = {op for totals in per_run for op in totals}
    medians = {op: float(np.median([totals.get(op, 0.0) for totals in per_run])) for op in ops}
    whole = sum(medians.values()) or 1.0
    ranked = sorted(medians.items(), key=lambda item: -item[1])
    return [{"op_type": op, "ms": round(ms, 2), "share": round(ms / whole, 4)} for op, ms in ranked]
