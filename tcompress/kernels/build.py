"""Compile the C kernels once per source and CPU, and load them with ctypes."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import uuid
from pathlib import Path

from tcompress.core.cache import cache_root

log = logging.getLogger(__name__)

SOURCES = [Path(__file__).with_name(name) for name in ("qgemm.c", "step.c", "obs.c")]
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c99"]


def enabled() -> bool:
    return os.environ.get("TCOMPRESS_KERNELS", "1") != "0"


def compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def cpu_signature() -> str:
    """The CPU's model and feature flags (a library built with -march=native is tied to them)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [line for line in info.splitlines() if line.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = []
    return "\n".join(lines) or platform.processor() or platform.machine()


def library_path(cc: str) -> Path:
    key = hashlib.sha256(b"".join(source.read_bytes() for source in SOURCES) + " ".join([cc, *FLAGS]).encode() + cpu_signature().encode())
    return cache_root() / "kernels" / f"qgemm-{key.hexdigest()[:16]}.so"


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, building them if needed; None where that is not possible."""
    if not enabled():
        return None
    cc = compiler()
    if cc is None:
        log.info("no C compiler found: QuantLinear runs on the dequantize-then-matmul path")
        return None
    path = library_path(cc)
    if not path.exists() and not build(cc, FLAGS, path):
        return None
    return load(path)


def build(cc: str, flags: list[str], path: Path) -> bool:
    """Compile the kernels with `flags` into `path`; False (and a warning) if the compiler fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")  # concurrent builds each rename a whole file
    command = [cc, *flags, *map(str, SOURCES), "-o", str(tmp), "-lm"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        log.warning("building the CPU kernels failed (%s); using the reference path:\n%s",
                    " ".join(command), result.stderr[-2000:])
        tmp.unlink(missing_ok=True)
        return False
    tmp.replace(path)
    return True


def load(path: Path) -> ctypes.CDLL:
    """The library at `path` with its functions' signatures declared."""
    lib = ctypes.CDLL(str(path))
    pointer, integer = ctypes.c_void_p, ctypes.c_int
    lib.tc_qgemm_f32.restype = lib.tc_dequantize.restype = lib.tc_simd.restype = integer
    lib.tc_qgemm_f32.argtypes = [pointer, integer, integer, pointer, integer, pointer, pointer, integer, integer,
                                 pointer, pointer, integer]
    lib.tc_qgemv_i8.restype = integer
    lib.tc_qgemv_i8.argtypes = lib.tc_qgemm_f32.argtypes
    lib.tc_qgemv_i8_multi.restype = integer
    lib.tc_qgemv_i8_multi.argtypes = [pointer, integer, integer, integer, pointer, pointer, pointer, pointer, pointer,
                                      pointer, integer, integer, integer]
    lib.tc_dequantize.argtypes = [pointer, integer, integer, pointer, pointer, integer, integer, pointer, integer]
    size_t, real = ctypes.c_size_t, ctypes.c_float
    lib.tc_rms_norm.restype = lib.tc_rope.restype = lib.tc_attention_step.restype = lib.tc_silu_mul.restype = None
    lib.tc_rms_norm.argtypes = [pointer, integer, integer, pointer, real, pointer]
    lib.tc_rope.argtypes = [pointer, integer, integer, integer, size_t, pointer, pointer]
    lib.tc_attention_step.argtypes = [pointer, pointer, pointer, integer, integer, integer, integer, integer, integer,
                                      real, pointer, integer]
    lib.tc_silu_mul.argtypes = [pointer, pointer, integer, pointer]
    lib.tc_gemm_f32.restype = None
    lib.tc_gemm_f32.argtypes = [pointer, integer, integer, pointer, integer, pointer, pointer, integer]
    lib.tc_decode_step.restype = integer
    lib.tc_decode_step.argtypes = [pointer, pointer, integer, integer, pointer, pointer, pointer, integer]
    lib.tc_int8_gemm.restype = None
    lib.tc_int8_gemm.argtypes = [pointer, pointer, integer, integer, pointer, pointer, integer, pointer, pointer,
                                 integer]
    lib.tc_obs_sweep.restype = integer
    lib.tc_obs_sweep.argtypes = [pointer, integer, integer, integer, pointer, integer, pointer, pointer, pointer,
                                 pointer, integer, pointer, pointer, integer]
    return lib


def available() -> bool:
    """Whether the compiled kernels can be used on this machine."""
    return library() is not None
