"""Polygraphy's second opinion on an artifact's TensorRT engines (the GPU check runs it on every artifact
it builds engines for).

Each engine runs beside its ONNX graph on ONNX Runtime (CPU) through Polygraphy's own runners (TrtRunner
on the plan, OnnxrtRunner on the graph) and one Comparator: `Comparator.run` on the same feeds, then
`Comparator.compare_accuracy` with Polygraphy's simple comparison. Independent of our gate in what runs
the engine and what compares: its per-output error figures (max / mean absolute and relative error over
the gate's images) sit in the report beside the engine gate's verdict. The feeds are the gate's images
preprocessed as deployed, run through the earlier graphs for split artifacts (the calibration feeds);
atol = rtol = the precision's max_prob_diff from the precision table.

    python -m maskclip_bench.polygraphy_check ARTIFACT [--images DIR] [--limit N] [--json FILE]

Status 0 when every output is within the tolerance, 3 when one is not (the JSON says which), 2 for an
artifact without engines.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from maskclip_runtime.command import command, json_option, write_json
from maskclip_runtime.errors import InputError, VerificationFailed

REFERENCE, CANDIDATE = "onnxruntime-cpu", "tensorrt"


def trt_runner(engine_path: Path, name: str):
    """Polygraphy's TrtRunner on an engine file: plan checked against its sidecar; a version-compatible plan
    is deserialised by a runtime that allows its lean runtime (polygraphy run --load-runtime's trust)."""
    from maskclip_runtime.backends.tensorrt import import_tensorrt
    from maskclip_runtime.contract.engine_header import engine_compat, read_engine_metadata, read_plan

    trt = import_tensorrt()  # missing: one line saying what to install, status 4
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.backend.trt.util import get_trt_logger

    metadata = read_engine_metadata(engine_path)
    runtime = trt.Runtime(get_trt_logger())
    runtime.engine_host_code_allowed = "version" in engine_compat(metadata)
    return TrtRunner(EngineFromBytes(read_plan(engine_path, metadata), runtime=runtime), name=name)


def compare_engines(
    artifact_dir: str | Path,
    images: str | None = None,
    engine_runner: Callable[[Path, str], object] | None = None,
    limit: int | None = None,
) -> dict:
    """The report: per graph and output, Polygraphy's error figures for the engine against ONNX Runtime.
    engine_runner(engine path, name) -> a Polygraphy runner of the engine (default: trt_runner); limit: compare
    on the first `limit` images only (the reference is ONNX Runtime on the CPU: minutes for a large model)."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, CompareFunc

    from maskclip_export.exporter import calibration_feeds
    from maskclip_export.verify import verification_batch
    from maskclip_runtime.contract.artifact import load_artifact
    from maskclip_runtime.contract.precision_table import precision_row

    artifact = load_artifact(artifact_dir)
    if not artifact.manifest.engines:
        raise InputError(f"{artifact.dir}: no TensorRT engines to compare (export with --trt)")
    precision = artifact.manifest.engines[0].precision
    tolerance = precision_row(precision).gate.max_prob_diff
    names, batch = verification_batch(artifact.preprocess, images)
    names, batch = names[:limit], batch[:limit]
    paths = {graph.name: artifact.file(graph.file) for graph in artifact.graphs}
    feeds = calibration_feeds(artifact.graphs, paths, batch, artifact.batch)
    compare = CompareFunc.simple(atol=tolerance, rtol=tolerance)
    graphs = {}
    for graph in artifact.graphs:
        runners = [
            OnnxrtRunner(SessionFromOnnx(str(paths[graph.name]), providers=["CPUExecutionProvider"]), name=REFERENCE),
            (engine_runner or trt_runner)(artifact.engines[graph.name], CANDIDATE),
        ]
        results = Comparator.run(runners, data_loader=feeds[graph.name])
        accuracy = Comparator.compare_accuracy(results, compare_func=compare)
        accuracy = accuracy if hasattr(accuracy, "items") else accuracy[0]  # Polygraphy 0.50+: one per function
        (iterations,) = accuracy.values()
        graphs[graph.name] = {name: _figures([iteration[name] for iteration in iterations]) for name in iterations[0]}
    return {
        "artifact": str(artifact.dir),
        "precision": precision,
        "engines": [e.file for e in artifact.manifest.engines],
        "compat": sorted({kind for e in artifact.manifest.engines for kind in e.compat}),
        "images": len(names),
        "atol": tolerance,
        "rtol": tolerance,
        "graphs": graphs,
        "passed": all(output["passed"] for outputs in graphs.values() for output in outputs.values()),
        "engine_gate_passed": (artifact.manifest.engine_verification or {}).get("passed"),
    }


def _figures(per_iteration: list) -> dict:
    """One output's OutputCompareResults over the iterations -> its worst and mean errors and verdict."""
    return {
        "max_absdiff": max(r.max_absdiff for r in per_iteration),
        "max_reldiff": max(r.max_reldiff for r in per_iteration),
        "mean_absdiff": sum(r.mean_absdiff for r in per_iteration) / len(per_iteration),
        "mean_reldiff": sum(r.mean_reldiff for r in per_iteration) / len(per_iteration),
        "passed": all(bool(r) for r in per_iteration),
    }


def summary_lines(report: dict) -> list[str]:
    """'graph/output: max |diff| 1.2e-03, mean 3.4e-05, max rel 2.0e-02 (ok)' per output."""
    return [
        f"{graph}/{name}: max |diff| {f['max_absdiff']:.2e}, mean {f['mean_absdiff']:.2e}, "
        f"max rel {f['max_reldiff']:.2e} ({'ok' if f['passed'] else 'over tolerance'})"
        for graph, outputs in report["graphs"].items()
        for name, f in outputs.items()
    ]


@command("maskclip_bench.polygraphy_check", extra="export")
@click.argument("artifact", type=click.Path(exists=True))
@click.option("--images", help="Comparison images: folder or glob (default: the gate's bundled samples + edits).")
@click.option("--limit", type=click.IntRange(min=1), help="Compare on the first LIMIT images only.")
@json_option("the report")
def main(artifact, images, limit, json_path):
    """Compare each TensorRT engine of ARTIFACT with its ONNX graph on ONNX Runtime, through Polygraphy."""
    report = compare_engines(artifact, images, limit=limit)
    if json_path:
        write_json(report, json_path)
    for line in summary_lines(report):
        click.echo(line, err=True)
    if not report["passed"]:
        raise VerificationFailed(
            f"Polygraphy: the engines of {artifact} differ from ONNX Runtime beyond atol = rtol = {report['atol']:g}"
        )


if __name__ == "__main__":
    main()
