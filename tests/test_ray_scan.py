"""maskclip-run --ray: the plain run's pipeline on a local Ray cluster. Records equal the plain run's (fake_prob
included), every input exactly once (a killed actor included), --resume, Parquet parts, a cluster started with
`ray start --head` on loopback, and the options refused before any work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskclip_runtime import cli
from maskclip_runtime.detect.detector import DEMO_DIR
from maskclip_runtime.errors import EXIT_BACKEND_UNAVAILABLE, EXIT_SOME_INPUTS_FAILED, EXIT_USAGE

EXAMPLES = sorted((DEMO_DIR / "examples").glob("*.jpg"))
BACKEND = ["--backend", "onnxruntime", "--device", "cpu", "-q"]


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli.main, [*map(str, args), *BACKEND])
    return result.exit_code, result.stderr


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def comparable(record: dict) -> dict:
    return {key: value for key, value in record.items() if key != "ms"}


def photo_folder(folder: Path, count: int) -> Path:
    """`count` distinct small JPEGs (the demo's examples, tinted), plus a broken file that fails."""
    folder.mkdir()
    sources = [np.asarray(Image.open(p).convert("RGB")) for p in EXAMPLES]
    for index in range(count):
        pixels = np.clip(sources[index % len(sources)].astype(int) + index % 7, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"photo_{index:04d}.jpg", quality=92)
    (folder / "broken.jpg").write_bytes(b"no image here")
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return photo_folder(tmp_path_factory.mktemp("ray") / "photos", 12)


@pytest.fixture(scope="module")
def plain(photos, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("plain") / "plain.jsonl"
    code, stderr = invoke(photos, "--json", out)
    assert code == EXIT_SOME_INPUTS_FAILED, stderr
    return read_records(out)


@pytest.fixture(autouse=True)
def no_cluster_left():
    ray = pytest.importorskip("ray", reason="maskclip-run --ray needs the ray extra: pip install -e '.[ray]'")
    yield
    assert not ray.is_initialized()  # every run ends its job (the local cluster stops with it)


def test_records_equal_the_plain_runs_and_resume_finishes_the_rest(photos, plain, tmp_path):
    """A plain run stopped after five images, finished by Ray with --resume (one Ray job: each starts a cluster)."""
    out = tmp_path / "ray.jsonl"
    first = sorted(photos.glob("photo_*.jpg"))[:5]
    code, stderr = invoke(*first, "--json", out)
    assert code == 0, stderr
    assert [comparable(r) for r in read_records(out)] == [comparable(r) for r in plain[1:6]]  # broken.jpg sorts first
    code, stderr = invoke(photos, "--json", out, "--resume", "--ray", "local", "--ray-actors", "2", "--batch", "4")
    assert code == EXIT_SOME_INPUTS_FAILED, stderr
    records = read_records(out)
    assert sorted(r["path"] for r in records) == sorted(r["path"] for r in plain)  # each input once
    assert [comparable(r) for r in records[:5]] == [comparable(r) for r in plain[1:6]]  # kept, not redone
    assert [comparable(r) for r in records[5:]] == [comparable(r) for r in plain[:1] + plain[6:]]


def detector_actors() -> list[int]:
    """Pids of this process's Ray actors that hold a Detector (Ray titles them ray::MapWorker(...)._Answerer)."""

    def parent(pid: int) -> int:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parent(pid)
            if pid == os.getpid():
                return True
        return False

    found = []
    for entry in os.listdir("/proc"):
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes()
            if entry.isdigit() and title.startswith(b"ray::MapWorker") and b"_Answerer" in title and ours(int(entry)):
                found.append(int(entry))
        except OSError:  # gone meanwhile, or not a process
            continue
    return found


@pytest.mark.slow
def test_a_killed_actor_is_replaced_and_every_image_answered_once(tmp_path):
    import ray

    from maskclip_runtime.pipeline.steps import Plan
    from maskclip_runtime.present.image_sinks import ImageFiles
    from maskclip_runtime.scale.ray_scan import Cluster, DetectorOptions, RayScan

    folder = photo_folder(tmp_path / "many", 300)
    paths = sorted(map(str, folder.glob("*.jpg")))
    front = RayScan(DetectorOptions(str(DEMO_DIR), "onnxruntime", "cpu", batch=1), Cluster("local", actors=1))
    killed, records = [], []
    try:
        for record in front.records(paths, Plan(), ImageFiles.for_inputs(paths, None, None)):
            records.append(record)
            if len(records) == 10:
                (actor,) = detector_actors()
                os.kill(actor, signal.SIGKILL)
                killed.append((actor, len(records)))
    finally:
        front.close()
    assert not ray.is_initialized() and killed and killed[0][1] < len(paths)
    assert [r["path"] for r in records] == paths  # in order, each once
    assert sum("error" in r for r in records) == 1  # broken.jpg only: the killed batch was retried, not failed


@pytest.mark.slow
def test_a_cluster_started_with_ray_start_on_loopback_writes_parquet(photos, plain, tmp_path):
    """`ray start --head --block` on 127.0.0.1, stopped at the end by ending that command (which stops the
    processes it started, and nothing else on the machine, unlike `ray stop`)."""
    import pyarrow.parquet as pq
    from serve_process import free_port, wait_until

    port = free_port()
    session = tempfile.mkdtemp(prefix="mcray", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    head = [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block", "--port", str(port)]
    head += ["--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--include-dashboard", "false"]
    head += ["--dashboard-agent-listen-port", str(free_port()), "--disable-usage-stats", "--temp-dir", session]
    # Ray takes 127.0.0.1 in an address for "this node" and swaps in the node's network address, unless told
    # that this is a one-machine cluster: then head, workers and driver all stay on loopback.
    # RAY_AUTH_MODE=token: the head makes a token (~/.ray/auth_token) and the driver presents it.
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    cluster = subprocess.Popen(head, env=env, start_new_session=True, **quiet)
    try:
        wait_until(lambda: _listening(port), timeout=120)
        folder = tmp_path / "parts"
        run = [sys.executable, "-c", "from maskclip_runtime.cli import main; main()", str(photos)]
        run += ["--parquet", str(folder), "--ray", f"127.0.0.1:{port}", *BACKEND]
        done = subprocess.run(run, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == EXIT_SOME_INPUTS_FAILED and done.stderr.count("broken.jpg") == 1, done.stderr
        rows = pq.read_table(folder).to_pylist()
    finally:
        cluster.terminate()
        cluster.wait(timeout=120)
        shutil.rmtree(session, ignore_errors=True)
    by_path = {row["path"]: row for row in rows}
    assert len(rows) == len(by_path) == len(plain)
    for record in plain:
        row = by_path[record["path"]]
        assert {k: row[k] for k in record if k != "ms"} == comparable(record)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize(
    "args",
    [
        ["--parquet", "parts"],  # Parquet is written by Ray workers
        ["--ray", "local", "--parquet", "parts", "--json", "r.jsonl"],
        ["--ray", "local", "--parquet", "parts", "--resume"],
        ["--ray", "local", "--ray-actors", "0"],
        ["--ray", "local", "--ray-gpus-per-actor", "-1"],
    ],
)
def test_contradicting_options_are_refused_before_any_work(photos, tmp_path, args):
    code, stderr = invoke(photos, *[str(tmp_path / a) if a in ("parts", "r.jsonl") else a for a in args])
    assert code == EXIT_USAGE and "Traceback" not in stderr, stderr


def test_a_non_empty_parquet_folder_is_refused(photos, tmp_path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "old.parquet").write_bytes(b"")
    code, stderr = invoke(photos, "--ray", "local", "--parquet", tmp_path / "parts")
    assert code == EXIT_USAGE and "not empty" in stderr


def test_without_ray_installed_the_run_says_how_to_get_it(photos, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code, stderr = invoke(photos, "--ray", "local")
    assert code == EXIT_BACKEND_UNAVAILABLE and "maskclip[ray]" in stderr


def test_an_unreachable_cluster_is_backend_unavailable(photos):
    code, stderr = invoke(photos, "--ray", "127.0.0.1:9")  # the discard port: nothing listens
    assert code == EXIT_BACKEND_UNAVAILABLE and "127.0.0.1:9" in stderr


def test_help_and_plain_runs_never_import_ray():
    script = (
        "import sys\nfrom maskclip_runtime import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'ray' not in sys.modules and 'pyarrow' not in sys.modules, 'ray imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--ray" in result.stdout, result.stderr


def test_sigterm_stops_the_ray_job_and_keeps_the_answers(tmp_path):
    folder = photo_folder(tmp_path / "many", 200)
    out = tmp_path / "r.jsonl"
    command = [sys.executable, "-c", "from maskclip_runtime.cli import main; main()", str(folder), "--json", str(out)]
    command += ["--ray", "local", "--batch", "1", *BACKEND]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(120, process.kill)
    timer.start()
    try:
        while not (out.exists() and out.read_text().count("\n") >= 5) and process.poll() is None:
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        timer.cancel()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    records = read_records(out)
    assert len(records) >= 5 and len({r["path"] for r in records}) == len(records)


def test_an_artifact_failing_its_self_check_on_the_actors_is_refused_like_the_plain_run(photos, tmp_path):
    """Each actor runs the self-check on its node: a graph whose numbers were altered (hashes redone) stops the
    job with the plain run's exit status 3, not as a Ray error."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from maskclip_runtime.contract.artifact import MANIFEST_NAME, write_manifest
    from maskclip_runtime.contract.manifest import Manifest
    from maskclip_runtime.errors import EXIT_VERIFICATION_FAILED

    folder = tmp_path / "altered"
    shutil.copytree(DEMO_DIR, folder)
    model = onnx.load(str(folder / "model.onnx"))
    weights = {t.name: t for t in model.graph.initializer}
    last_conv = [n for n in model.graph.node if n.op_type == "Conv"][-1]
    tensor = weights[last_conv.input[1]]
    tensor.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(tensor), tensor.name))
    onnx.save(model, str(folder / "model.onnx"))
    write_manifest(folder, Manifest.from_dict(json.loads((folder / MANIFEST_NAME).read_text())))
    plain_code, _ = invoke(photos, "--model", folder)
    code, stderr = invoke(photos, "--model", folder, "--ray", "local", "--json", tmp_path / "r.jsonl")
    assert code == plain_code == EXIT_VERIFICATION_FAILED, stderr
    assert "self-check" in stderr and "Traceback" not in stderr
