"""Opt-in scenario: the MLPerf Storage lock runs a tiny real DLIO workload on CPU."""

import json
import shlex

VENV = "/opt/lockstep/venv"
WORK = "/tmp/dlio-full"
# unet3d (MLPerf Storage's PyTorch/NPZ workload), shrunk: 8 files of 64 KiB, 1 short epoch.
DLIO_ARGS = [
    "workload=unet3d_v100",
    "++workload.workflow.generate_data=True",
    "++workload.workflow.train=True",
    "++workload.workflow.checkpoint=False",
    # Created even when checkpointing is off, relative to the working directory by default.
    "++workload.checkpoint.checkpoint_folder=%s/checkpoints" % WORK,
    "++workload.dataset.data_folder=%s/data" % WORK,
    "++workload.dataset.num_files_train=8",
    "++workload.dataset.record_length=65536",
    "++workload.dataset.record_length_stdev=0",
    "++workload.dataset.record_length_resize=65536",
    "++workload.reader.batch_size=2",
    "++workload.reader.read_threads=1",
    "++workload.train.epochs=1",
    "++workload.train.computation_time=0.01",
    "++workload.output.folder=%s/out" % WORK,
    "++hydra.run.dir=%s/hydra" % WORK,
]


def as_bench(host, script):
    """Run a bash script as the benchmark user with the venv activated (MPI env included)."""
    return host.run("runuser -u bench -- bash -c %s" % shlex.quote(". %s/bin/activate && %s" % (VENV, script)))


def test_venv_is_cpu_only(host):
    code = ("import importlib.metadata as m, json, re; print(json.dumps("
            "{re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): d.version for d in m.distributions()}))")
    installed = json.loads(host.check_output("%s/bin/python -c %s" % (VENV, shlex.quote(code))))
    assert installed["torch"] == "2.13.0+cpu"
    assert "tensorflow-cpu" in installed and "tensorflow" not in installed
    assert installed["dlio-benchmark"] == "2.0.0"
    assert not [name for name in installed if name.startswith("nvidia-") or name in ("triton", "torchvision")]


def test_dlio_tiny_workload_on_cpu(host):
    host.run("rm -rf %s" % WORK)
    run = as_bench(host, "mkdir -p %s && cd %s && mpiexec -n 2 --oversubscribe python /usr/local/share/no_cuda_run.py %s"
                   % (WORK, WORK, " ".join(DLIO_ARGS)))
    assert run.rc == 0, run.stdout + run.stderr
    checks = [json.loads(line.split(" ", 1)[1]) for line in run.stdout.splitlines()
              if line.startswith("no-cuda-check ")]
    assert len(checks) == 2, run.stdout
    for check in checks:
        assert check["torch"] == "2.13.0+cpu"
        assert check["torch_cuda"] is None
        assert check["cuda_available"] is False
        assert check["cuda_libs"] == []
    log = run.stdout + run.stderr  # DLIO logs on stderr
    assert "Number of Simulated Accelerators: 2" in log
    assert "Training Throughput (samples/second)" in log
    assert host.check_output("find %s/data/train -name '*.npz' | wc -l" % WORK) == "8"
    assert host.file("%s/out/summary.json" % WORK).exists
