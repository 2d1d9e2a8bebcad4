"""Make the CUDA build of torchvision work with the CPU build of torch (only where needed).

torchvision==0.28.0 is published only as a CUDA build; with CPU torch its compiled ops cannot
load (libc10_cuda.so / libtorch_cuda.so do not exist), so `torchvision::nms` is missing and
everything importing torchvision (peft, lightning, timm, groundingdino, SAM-HQ) breaks. This
compiles two tiny stand-in libraries with those sonames (they abort if a CUDA path is ever taken)
and preloads them from a .pth file, so every interpreter of the environment, Ray workers
included, has them. Run with the environment's Python; it does nothing when not needed.
"""

import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIBS = {"libc10_cuda.so": "c10_cuda_shim.cpp", "libtorch_cuda.so": "torch_cuda_shim.cpp"}
PTH_NAME = "lyrics_torchvision_cpu.pth"
PROBE = "import torch, torchvision.ops as o; o.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)"


def torchvision_ops_work() -> bool:
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True).returncode == 0


def main() -> None:
    import torch

    if torch.version.cuda is not None or torchvision_ops_work():
        print("torchvision ops load: nothing to do")
        return
    lib_dir = Path(sys.prefix) / "lib" / "lyrics-torchvision-cpu"
    lib_dir.mkdir(parents=True, exist_ok=True)
    for lib, source in LIBS.items():
        subprocess.run(["g++", "-shared", "-fPIC", "-O2", f"-Wl,-soname,{lib}", "-o", str(lib_dir / lib), str(HERE / source)], check=True)
    loads = "; ".join(f"ctypes.CDLL({str(lib_dir / lib)!r}, mode=ctypes.RTLD_GLOBAL)" for lib in LIBS)
    (Path(sysconfig.get_paths()["purelib"]) / PTH_NAME).write_text(f"import ctypes; {loads}\n")
    if not torchvision_ops_work():
        sys.exit("torchvision ops still fail to load after installing the CPU shim; see tools/torchvision_cpu/install.py")
    print(f"installed the torchvision CPU shim in {lib_dir}")


if __name__ == "__main__":
    main()
