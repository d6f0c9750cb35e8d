"""Int8 graphs compute the same on every x86 CPU: run under an emulated AVX2-only CPU (QEMU's Haswell model,
no AVX-512, no VNNI), they agree with the same graph on this machine's CPU.

ONNX Runtime picks its int8 GEMM kernels by CPUID; QEMU user-mode answers CPUID for the CPU it emulates,
so this runs the AVX2 kernels whatever the host has. The 8-bit-weight graph is the control: its u8 x s8
products saturate in AVX2's int16 pair sums, so it must disagree, proving the emulation reaches those
kernels.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from maskclip_export.onnx_export import export_graphs
from maskclip_export.quantize import FeedCalibrationReader, quantize_for_cpu, quantize_to_int8
from maskclip_export.verify import default_verification_images
from maskclip_runtime.backends.onnxruntime import OnnxRuntimeRunner
from maskclip_runtime.contract.manifest import BatchSpec
from maskclip_runtime.detect.compare import mask_agreement
from maskclip_runtime.kernel.preprocess import preprocess_batch

QEMU = shutil.which("qemu-x86_64")
pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(QEMU is None, reason="needs qemu-x86_64 (Debian package qemu-user) to emulate an AVX2 CPU"),
]

RUN_GRAPHS = textwrap.dedent(
    """
    import sys, numpy as np, onnxruntime as ort
    images = np.load(sys.argv[1])
    results = {}
    for path in sys.argv[3:]:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        outs = [session.run(["fake_prob", "mask"], {"image": images[i : i + 1]}) for i in range(len(images))]
        results[path + "|fake_prob"] = np.concatenate([o[0] for o in outs])
        results[path + "|mask"] = np.concatenate([o[1] for o in outs])
    np.savez(sys.argv[2], **results)
    """
)


@pytest.fixture(scope="module")
def graphs(tiny_model, tmp_path_factory):
    work = tmp_path_factory.mktemp("isa")
    images = preprocess_batch([im for _, im in default_verification_images()[16:22]], tiny_model.preprocess_spec())
    fp32 = export_graphs(tiny_model, work, "fused", BatchSpec.fixed(1), 17)["fused"]
    calib = [{"image": images[i : i + 1]} for i in range(len(images))]
    built = {}
    for name, quantize, reduce_range in (
        ("int8-cpu", quantize_for_cpu, True),
        ("int8", quantize_to_int8, True),
        ("int8-cpu-8bit-weights", quantize_for_cpu, False),
    ):
        built[name] = work / f"{name}.onnx"
        quantize(fp32, built[name], FeedCalibrationReader(calib), reduce_range=reduce_range)
    np.save(work / "images.npy", images)
    script = work / "run_graphs.py"
    script.write_text(RUN_GRAPHS)
    out = work / "avx2.npz"
    paths = [str(path) for path in built.values()]
    subprocess.run(
        [QEMU, "-cpu", "Haswell", sys.executable, str(script), str(work / "images.npy"), str(out), *paths],
        check=True,
        capture_output=True,
        timeout=900,
    )
    emulated = np.load(out)
    results = {}
    for name, path in {"fp32": fp32, **built}.items():
        runner = OnnxRuntimeRunner(path, device="cpu", threads=1)
        native = [runner.infer({"image": images[i : i + 1]}) for i in range(len(images))]
        results[name] = (
            {k: np.concatenate([n[k] for n in native]) for k in ("fake_prob", "mask")},
            {k: emulated[f"{path}|{k}"] for k in ("fake_prob", "mask")} if name in built else None,
        )
    return results


@pytest.mark.parametrize("precision", ["int8-cpu", "int8"])
def test_shipped_int8_graphs_agree_on_avx2_and_on_this_cpu(graphs, precision):
    native, avx2 = graphs[precision]
    assert np.abs(native["fake_prob"] - avx2["fake_prob"]).max() < 1e-3
    # Float parts run other kernels (AVX2 vs AVX-512 fp32 GEMMs): a rounding-level difference can move a
    # value across a requantisation step, so a few pixels of a random model's near-threshold mask may differ.
    assert mask_agreement(native["mask"], avx2["mask"], 0.5).min() > 0.99


def test_full_8bit_weights_break_on_avx2(graphs):
    """The control, judged against the fp32 graph (so it holds on an AVX2-only host too): on AVX2 the 8-bit
    weights lose far more of the mask than the shipped 7-bit ones; if not, the emulation would not be
    running the saturating kernels."""
    fp32 = graphs["fp32"][0]["mask"]
    shipped = mask_agreement(fp32, graphs["int8-cpu"][1]["mask"], 0.5).min()
    eight_bit = mask_agreement(fp32, graphs["int8-cpu-8bit-weights"][1]["mask"], 0.5).min()
    assert shipped > 0.95 and eight_bit < shipped - 0.05
