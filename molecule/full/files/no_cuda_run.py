"""Run dlio_benchmark with the given arguments, then report this rank's loaded CUDA libraries.

One JSON line per rank, prefixed "no-cuda-check", from /proc/self/maps at exit; exit 3 when
any CUDA/NVIDIA library was mapped.
"""
import atexit
import json
import os
import re
import sys

CUDA_LIB = re.compile(r"/(lib(cuda|cudart|cublas|cudnn|cufft|curand|cusparse|cusolver|nccl|nvrtc|nvJitLink|nvToolsExt)"
                      r"[^/]*\.so[^/]*|nvidia/.*)$")


def report():
    with open("/proc/self/maps") as maps:
        libs = {line.split()[-1] for line in maps if ".so" in line}
    torch = sys.modules.get("torch")
    result = {
        "pid": os.getpid(),
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
