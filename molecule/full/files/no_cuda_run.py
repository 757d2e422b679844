"""Run dlio_benchmark with the given arguments, then report what this rank ran.

One JSON line per rank at exit, prefixed "no-cuda-check": host, MPI rank, the interpreter
(sys.executable, the venv it belongs to, where torch and dlio_benchmark were imported from)
and the CUDA/NVIDIA libraries mapped into the process (/proc/self/maps); exit 3 when any was.
"""
import atexit
import json
import os
import re
import socket
import sys

CUDA_LIB = re.compile(r"/(lib(cuda|cudart|cublas|cudnn|cufft|curand|cusparse|cusolver|nccl|nvrtc|nvJitLink|nvToolsExt)"
                      r"[^/]*\.so[^/]*|nvidia/.*)$")


def origin(name):
    module = sys.modules.get(name)
    return os.path.realpath(module.__file__) if module is not None and getattr(module, "__file__", None) else None


def report():
    with open("/proc/self/maps") as maps:
        libs = {line.split()[-1] for line in maps if ".so" in line}
    torch = sys.modules.get("torch")
    result = {
        "hostname": socket.gethostname(),
        "rank": os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK")),
        "pid": os.getpid(),
        "executable": sys.executable,
        "prefix": os.path.realpath(sys.prefix),
        "torch_file": origin("torch"),
        "dlio_file": origin("dlio_benchmark"),
        "torch": getattr(torch, "__version__", None),
        "torch_cuda": torch.version.cuda if torch else None,
        "cuda_available": torch.cuda.is_available() if torch else None,
        "shared_libs": len(libs),
        "cuda_libs": sorted(lib for lib in libs if CUDA_LIB.search(lib)),
    }
    print("no-cuda-check " + json.dumps(result), flush=True)
    if result["cuda_libs"]:
        os._exit(3)


atexit.register(report)
sys.argv[0] = "dlio_benchmark"
from dlio_benchmark.main import main  # noqa: E402  (after the hook, so it runs on any exit)

main()
