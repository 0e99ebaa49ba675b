"""Compile checks of the CUDA sources, no GPU needed (docs/design.md section 6).

* every ``csrc/*.cu`` compiles with ``nvcc -c`` for sm_80 and for sm_90a, the architectures a build holds
  (skipped cleanly without nvcc), with the same defines torch's extension builder passes;
* ``-Xptxas -v`` is parsed and NO kernel spills on ANY architecture it is built for (the sm_80 kernels
  run on Hopper too: the backward always, the forward with BIGBIRD_CUDA_DISABLE_SM90=1);
* ptxas warnings (e.g. wgmma serialisation, ignored setmaxnreg) fail the test;
* the launch arithmetic of ``csrc/bigbird_attn.h`` (plan_fwd / plan_bwd, the very functions the
  launchers and the binding call) is run on the host by ``tests/cuda_host_check.cpp`` (g++): every grid
  of every kernel stays within CUDA's limits (x < 2^31, y and z <= 65535) for extreme shapes (B*H >
  65535, 64k tokens), and the in-place input rule (alignment, strides) is checked on real CPU tensors;
* static resource figures per kernel and architecture (registers, spills, shared memory per CTA, CTAs
  per SM, and on sm_90a the HGMMA instructions per main-loop step against the step's useful FLOPs, from
  ``cuobjdump -sass``) are checked and printed as a table (``pytest -s``);
* the torch binding ``csrc/bigbird_attn.cpp`` is syntax-checked with ``g++ -fsyntax-only`` against the
  headers shipped in the installed torch wheel (a CPU wheel lacks one generated CUDA header, which is
  stubbed here; only syntax and types are checked, nothing is linked);
* the ``cuda`` backend imports on any torch and, without a CUDA build, refuses every input with reasons.

All compilations run in parallel once per session (a thread pool over processes).
"""

from __future__ import annotations

import concurrent.futures
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
HOST_CHECK = Path(__file__).resolve().parent / "cuda_host_check.cpp"
CU_FILES = sorted(p.name for p in CSRC.glob("*.cu"))
ARCHS = {
    "sm_80": "-gencode=arch=compute_80,code=sm_80",
    "sm_90a": "-gencode=arch=compute_90a,code=sm_90a",
}
# same defines torch.utils.cpp_extension passes to nvcc
TORCH_NVCC_DEFINES = [
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
    "--expt-relaxed-constexpr",
]
# Per-architecture limits (CUDA programming guide, compute capabilities 8.0 and 9.0): registers per SM
# sub-partition (4 per SM), warps and CTAs per SM, shared memory per SM and per CTA (opt-in), and the
# shared memory the driver reserves per CTA.
ARCH_LIMITS = {
    "sm_80": dict(regs_per_quarter=16384, max_warps=64, max_ctas=32, smem_sm=164 * 1024, smem_cta=163 * 1024,
                  smem_reserved=1024),
    "sm_90a": dict(regs_per_quarter=16384, max_warps=64, max_ctas=32, smem_sm=228 * 1024, smem_cta=227 * 1024,
                   smem_reserved=1024),
}
# The configuration the figures are computed for (BigBird-base at 4096 tokens: window 3, globals 0 and
# -1, r = 3, so W = 8), plus shared-memory worst cases the backend accepts (more globals, wider rows).
TYPICAL = dict(B=1, H=12, S=4096, W=8, G=2, kv_split=16, q_split=16)
SMEM_CASES = [TYPICAL, dict(TYPICAL, W=40, G=32), dict(TYPICAL, S=65536, W=14, G=2, kv_split=64, q_split=64)]


def _find_tool(name: str) -> str | None:
    """nvcc and friends on PATH or under CUDA_HOME; cuobjdump also ships with triton's NVIDIA backend."""
    tool = shutil.which(name)
    if tool:
        return tool
    for env in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(env)
        if home and (Path(home) / "bin" / name).exists():
            return str(Path(home) / "bin" / name)
    if Path(f"/usr/local/cuda/bin/{name}").exists():
        return f"/usr/local/cuda/bin/{name}"
    try:
        import triton

        cand = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if cand.exists():
            return str(cand)
    except ImportError:
        pass
    return None


NVCC = _find_tool("nvcc")
CUOBJDUMP = _find_tool("cuobjdump")


@dataclass
class KernelInfo:
    name: str
    registers: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    static_smem: int = 0
    hgmma: dict[str, int] = field(default_factory=dict)  # SASS HGMMA shape -> count (sm_90a objects)


@dataclass
class CompileResult:
    rc: int
    seconds: float
    output: str
    kernels: list[KernelInfo] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _demangle(names: list[str]) -> dict[str, str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    if len(out) != len(names):
        return {n: n for n in names}
    short = {}
    for n, d in zip(names, out):
        d = re.sub(r"bigbird::\(anonymous namespace\)::", "", d)
        d = re.sub(r"\(.*\)$", "", d)  # drop the parameter list
        short[n] = d
    return short


def parse_ptxas(output: str) -> tuple[list[KernelInfo], list[str]]:
    """Kernels (registers, stack, spills, static shared memory) and ptxas warnings from ``-Xptxas -v``."""
    kernels: list[KernelInfo] = []
    cur: KernelInfo | None = None
    for line in output.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            cur = KernelInfo(m.group(1))
            kernels.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur.stack, cur.spill_stores, cur.spill_loads = (int(x) for x in m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur.registers = int(m.group(1))
            m = re.search(r"(\d+) bytes smem", line)
            cur.static_smem = int(m.group(1)) if m else 0
    warnings = [ln.strip() for ln in output.splitlines() if re.search(r"\bwarning\b", ln, re.I)]
    return kernels, warnings


def parse_hgmma(sass: str) -> dict[str, dict[str, int]]:
    """Mangled function name -> {HGMMA shape (e.g. '64x128x16'): count} from ``cuobjdump -sass``."""
    counts: dict[str, dict[str, int]] = {}
    fn = None
    for line in sass.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            fn = m.group(1)
            counts.setdefault(fn, {})
            continue
        m = re.search(r"\bHGMMA\.(\d+x\d+x\d+)", line)
        if m and fn is not None:
            counts[fn][m.group(1)] = counts[fn].get(m.group(1), 0) + 1
    return counts


def _compile_cu(fname: str, arch: str, outdir: str) -> CompileResult:
    obj = Path(outdir) / f"{fname}.{arch}.o"
    cmd = [NVCC, "-c", "-O3", "-std=c++17", "--use_fast_math", "-lineinfo", *TORCH_NVCC_DEFINES, ARCHS[arch],
           "-Xptxas", "-v", str(CSRC / fname), "-o", str(obj)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    out = p.stdout + p.stderr
    kernels, warnings = parse_ptxas(out)
    if p.returncode == 0 and arch == "sm_90a" and CUOBJDUMP:
        sass = subprocess.run([CUOBJDUMP, "-sass", str(obj)], capture_output=True, text=True).stdout
        hg = parse_hgmma(sass)
        for k in kernels:
            k.hgmma = hg.get(k.name, {})
    names = _demangle([k.name for k in kernels])
    for k in kernels:
        k.name = names[k.name]
    return CompileResult(p.returncode, time.perf_counter() - t0, out, kernels, warnings)


def _build_host_check(outdir: str) -> CompileResult | str:
    """g++ build of tests/cuda_host_check.cpp against csrc/bigbird_attn.h; returns the executable's path in
    ``output`` (or a skip reason string)."""
    gxx = shutil.which("g++") or shutil.which("c++")
    if gxx is None:
        return "no g++"
    cuda_inc = _cuda_include()
    if cuda_inc is None:
        return "cuda_runtime.h not found"
    exe = Path(outdir) / "cuda_host_check"
    cmd = [gxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-I", str(CSRC), "-isystem", str(cuda_inc), str(HOST_CHECK),
           "-o", str(exe)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    out = p.stdout + p.stderr
    warnings = [ln.strip() for ln in out.splitlines() if "warning" in ln]
    return CompileResult(p.returncode, time.perf_counter() - t0, str(exe) if p.returncode == 0 else out, [], warnings)


def _cuda_include() -> Path | None:
    for cand in ([Path(NVCC).resolve().parents[1] / "include"] if NVCC else []) + [Path("/usr/local/cuda/include")]:
        if (cand / "cuda_runtime.h").exists():
            return cand
    return None


def _cpp_std() -> str:
    """The C++ standard torch's extension builder uses for this torch (c++20 from torch 2.10 on)."""
    try:
        from torch.utils import cpp_extension

        return "c++20" if "-std=c++20" in inspect.getsource(cpp_extension) else "c++17"
    except Exception:  # noqa: BLE001
        return "c++17"


def _syntax_check_cpp(outdir: str) -> CompileResult | str:
    """g++ -fsyntax-only of the binding; returns a skip reason string when it cannot be attempted."""
    gxx = shutil.which("g++") or shutil.which("c++")
    if gxx is None:
        return "no g++"
    tinc = Path(torch.__file__).parent / "include"
    if not (tinc / "torch" / "library.h").exists():
        return f"torch headers not found under {tinc}"
    pyinc = sysconfig.get_paths().get("include")
    if not pyinc or not (Path(pyinc) / "Python.h").exists():
        return "Python.h not found"
    cuda_inc = _cuda_include()
    if cuda_inc is None:
        return "cuda_runtime.h not found"
    stub = Path(outdir) / "stub"
    if not (tinc / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists():
        # generated at torch build time and missing from CPU wheels; its only content is this define
        (stub / "c10" / "cuda" / "impl").mkdir(parents=True, exist_ok=True)
        (stub / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    cmd = [gxx, f"-std={_cpp_std()}", "-fsyntax-only", "-Wall", "-Wextra", "-DTORCH_EXTENSION_NAME=_C",
           "-isystem", str(tinc), "-isystem", str(tinc / "torch" / "csrc" / "api" / "include"), "-isystem", str(stub),
           "-isystem", str(cuda_inc), "-isystem", pyinc, str(CSRC / "bigbird_attn.cpp")]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    out = p.stdout + p.stderr
    warnings = [ln.strip() for ln in out.splitlines() if "warning" in ln and "bigbird_attn" in ln]
    return CompileResult(p.returncode, time.perf_counter() - t0, out, [], warnings)


@pytest.fixture(scope="session")
def compiled():
    """All compilations (and the host-check build), run once, in parallel; object files are discarded."""
    if NVCC is None:
        pytest.skip("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    outdir = tempfile.mkdtemp(prefix="bigbird_nvcc_")
    jobs = {}
    workers = max(2, min(len(CU_FILES) * len(ARCHS) + 2, (os.cpu_count() or 2) + 2))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        # longest first: the backward and the Hopper file
        order = sorted(((f, a) for f in CU_FILES for a in ARCHS), key=lambda fa: ("bwd" not in fa[0], "sm90" not in fa[0]))
        for f, a in order:
            jobs[(f, a)] = pool.submit(_compile_cu, f, a, outdir)
        jobs["cpp"] = pool.submit(_syntax_check_cpp, outdir)
        jobs["host"] = pool.submit(_build_host_check, outdir)
        results = {key: fut.result() for key, fut in jobs.items()}
    _print_compile_summary(results)
    yield results
    shutil.rmtree(outdir, ignore_errors=True)


def _print_compile_summary(results) -> None:
    lines = ["", "compilations:"]
    for key, res in results.items():
        if isinstance(key, tuple) and isinstance(res, CompileResult):
            lines.append(f"  {key[0]} [{key[1]}] rc={res.rc} {res.seconds:.1f}s, {len(res.kernels)} kernels")
    for key, what in (("cpp", "bigbird_attn.cpp g++ -fsyntax-only"), ("host", "cuda_host_check.cpp g++")):
        res = results.get(key)
        lines.append(f"  {what} " + (f"rc={res.rc} {res.seconds:.1f}s" if isinstance(res, CompileResult) else f"not run: {res}"))
    print("\n".join(lines), file=sys.stderr)


@pytest.fixture(scope="session")
def host_check(compiled):
    """Runs queries through the compiled tests/cuda_host_check.cpp; returns one parsed JSON object per query."""
    res = compiled["host"]
    if isinstance(res, str):
        pytest.skip(f"host check program not built: {res}")
    assert res.rc == 0, f"g++ failed for tests/cuda_host_check.cpp:\n{res.output[-6000:]}"
    assert not res.warnings, "warnings in the host check program:\n" + "\n".join(res.warnings)
    exe = res.output

    def query(lines: list[str]) -> list[dict]:
        p = subprocess.run([exe], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        out = [json.loads(ln) for ln in p.stdout.splitlines()]
        assert len(out) == len(lines) and not any("error" in o for o in out), out
        return out

    return query


def _fwd_query(c: dict, D: int, sm90: bool) -> str:
    return f"fwd {c['B']} {c['H']} {c['S']} {D} {c['W']} {c['G']} {c['kv_split']} {int(sm90)}"


def _bwd_query(c: dict, D: int) -> str:
    return f"bwd {c['B']} {c['H']} {c['S']} {D} {c['W']} {c['G']} {c['kv_split']} {c['q_split']}"


# ------------------------------------------------------------------------------------------------ tests


def test_sources_present():
    assert {"bigbird_attn_fwd_sm80.cu", "bigbird_attn_bwd_sm80.cu", "bigbird_attn_fwd_sm90.cu"} <= set(CU_FILES)
    assert (CSRC / "bigbird_attn.h").exists() and (CSRC / "bigbird_attn.cpp").exists()


def test_cu_files_have_no_torch_includes():
    for f in [*CU_FILES, "bigbird_attn.h"]:
        text = (CSRC / f).read_text()
        assert not re.search(r"#include\s*[<\"](torch|ATen|c10)/", text), f"{f} must stay free of torch headers"


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("fname", CU_FILES)
def test_nvcc_compiles_without_spills(compiled, fname, arch):
    """Every kernel, on every architecture it is built for: compiles, no ptxas warning, no spill at all."""
    res = compiled[(fname, arch)]
    assert res.rc == 0, f"nvcc failed for {fname} [{arch}]:\n{res.output[-6000:]}"
    assert res.kernels, f"no kernels reported for {fname} [{arch}]:\n{res.output[-2000:]}"
    assert not res.warnings, f"{fname} [{arch}] compiled with warnings:\n" + "\n".join(res.warnings)
    spilled = [f"{k.name}: {k.spill_stores}/{k.spill_loads} B spill stores/loads, {k.stack} B stack"
               for k in res.kernels if k.spill_stores or k.spill_loads]
    assert not spilled, f"{fname} [{arch}] spills:\n" + "\n".join(spilled)


def test_hopper_kernel_is_real_on_sm90a_and_stub_on_sm80(compiled):
    """The sm_90a build holds the TMA/wgmma kernel; the sm_80 build of the same file is an empty stub."""
    hop = compiled[("bigbird_attn_fwd_sm90.cu", "sm_90a")]
    amp = compiled[("bigbird_attn_fwd_sm90.cu", "sm_80")]
    assert hop.rc == 0 and amp.rc == 0
    big = [k for k in hop.kernels if "bigbird_fwd_sm90_kernel" in k.name]
    stub = [k for k in amp.kernels if "bigbird_fwd_sm90_kernel" in k.name]
    assert len(big) == 8 and len(stub) == 8, "expected fp16/bf16 x D 64/128 x has_mask instantiations"
    assert min(k.registers for k in big) > 32, "the sm_90a Hopper kernel looks empty"
    assert max(k.registers for k in stub) <= 16, "the sm_80 build of the Hopper kernel should be a stub"


def test_sm90_probe_marker_tells_the_builds_apart(compiled):
    """bigbird_fwd_sm90_supported() decides from cudaFuncGetAttributes(probe).sharedSizeBytes: the sm_90a
    build of the probe kernel must carry its static shared-memory marker and the sm_80 build none."""
    text = (CSRC / "bigbird_attn_fwd_sm90.cu").read_text()
    words = int(re.search(r"constexpr int kProbeMarkerWords = (\d+);", text).group(1))
    probes = {arch: [k for k in compiled[("bigbird_attn_fwd_sm90.cu", arch)].kernels if "bigbird_sm90_probe_kernel" in k.name]
              for arch in ARCHS}
    assert len(probes["sm_90a"]) == 1 and len(probes["sm_80"]) == 1
    assert probes["sm_90a"][0].static_smem >= 4 * words
    assert probes["sm_80"][0].static_smem == 0
    # the probe never allocates, launches or synchronises (CUDA-graph capture safe)
    probe_fn = text[text.index("int bigbird_fwd_sm90_supported(int device)"):]
    for forbidden in ("cudaMalloc", "cudaMemcpy", "cudaDeviceSynchronize", "cudaStreamSynchronize", "<<<"):
        assert forbidden not in probe_fn, f"the sm90 probe must not call {forbidden}"


# (B, H, S): extremes of the supported domain (B, H <= 65535 and B*H*S < 2^31)
GRID_SHAPES = [
    (4096, 16, 256),    # B*H = 65536: the split merge / reductions once put B*H on grid y
    (65535, 1, 128),
    (1, 65535, 128),
    (4096, 4096, 64),   # B*H = 2^24
    (1, 1, 65536),      # 1024 blocks
    (2, 16, 1 << 20),   # 16384 blocks: B*H*S = 2^25
]


@pytest.mark.parametrize("kv_split", [1, 16])
def test_every_launch_grid_is_within_cuda_limits(host_check, kv_split):
    """plan_fwd / plan_bwd (what the launchers launch) for extreme shapes, both head dims, both forward paths,
    with and without global blocks; split sizes of 1 force every split merge / reduction."""
    queries, labels = [], []
    for B, H, S in GRID_SHAPES:
        nb = S // 64
        for G in sorted({0, min(2, nb)}):
            c = dict(B=B, H=H, S=S, W=3 + G + 3, G=G, kv_split=kv_split, q_split=kv_split)
            for D in (64, 128):
                for sm90 in (False, True):
                    queries.append(_fwd_query(c, D, sm90))
                    labels.append(f"fwd B={B} H={H} S={S} D={D} G={G} sm90={sm90}")
                queries.append(_bwd_query(c, D))
                labels.append(f"bwd B={B} H={H} S={S} D={D} G={G}")
        queries.append(f"mask {B} {S}")
        labels.append(f"mask B={B} S={S}")
    bad = []
    for label, plan in zip(labels, host_check(queries)):
        for kernel, g in plan.items():
            if g["launched"] and not (1 <= g["x"] <= 2**31 - 1 and 1 <= g["y"] <= 65535 and 1 <= g["z"] <= 65535):
                bad.append(f"{label}: {kernel} grid ({g['x']}, {g['y']}, {g['z']})")
    assert not bad, "grids beyond CUDA's limits:\n" + "\n".join(bad)
    merges = [p["merge"] for p in host_check([_fwd_query(dict(B=4096, H=16, S=256, W=8, G=2, kv_split=1), 64, False)])]
    assert merges[0]["launched"] and merges[0]["x"] == 4096 * 16, "b*h goes on grid x"


def _input_query(t: torch.Tensor) -> str:
    return "input {} {} {} {}".format(t.data_ptr(), " ".join(map(str, t.shape)), " ".join(map(str, t.stride())), t.element_size())


def test_input_read_in_place_rule_on_real_tensors(host_check):
    """bigbird::readable_in_place / kernel_strides (what the binding uses to read an input in place or copy
    it) on CPU tensors: a contiguous tensor at a misaligned storage offset is copied (``.contiguous()``
    keeps it), the model's BSHD view is read in place through its strides."""
    B, H, S, D = 2, 3, 128, 64
    base = torch.empty(B * H * S * D + 64, dtype=torch.bfloat16)
    aligned = base[: B * H * S * D].view(B, H, S, D)
    assert aligned.data_ptr() % 16 == 0
    misaligned = base[1 : 1 + B * H * S * D].view(B, H, S, D)  # 2-byte offset, still contiguous
    assert misaligned.is_contiguous() and misaligned.contiguous().data_ptr() == misaligned.data_ptr()
    bshd = torch.empty(B, S, H, D, dtype=torch.float16).transpose(1, 2)  # the model's view
    narrow = torch.empty(B, H, S, 68, dtype=torch.bfloat16)[..., :64]   # row stride 136 B: not a multiple of 16
    wide = torch.empty(B, H, S, 72, dtype=torch.bfloat16)[..., :64]     # row stride 144 B: fine
    col_major = torch.empty(B, H, D, S, dtype=torch.bfloat16).transpose(2, 3)
    expanded = torch.empty(1, H, S, D, dtype=torch.bfloat16).expand(B, H, S, D)
    single = torch.empty(1, 1, S, D, dtype=torch.bfloat16).as_strided((1, 1, S, D), (5, 7, D, 1))
    cases = {"aligned": aligned, "misaligned": misaligned, "bshd": bshd, "narrow": narrow, "wide": wide,
             "col_major": col_major, "expanded": expanded, "single": single}
    want = {"aligned": True, "misaligned": False, "bshd": True, "narrow": False, "wide": True, "col_major": False,
            "expanded": False, "single": True}
    got = dict(zip(cases, host_check([_input_query(t) for t in cases.values()])))
    assert {k: v["in_place"] for k, v in got.items()} == want
    assert got["bshd"]["strides"] == [S * H * D, D, H * D]
    assert got["wide"]["strides"] == [H * S * 72, S * 72, 72]
    # size-1 dims get a stride aligned like the others (TMA checks every stride), never the arbitrary 5, 7
    assert got["single"]["strides"] == [S * D, S * D, D]


def _kernel_D(name: str) -> int | None:
    m = re.search(r"<(?:true|false), (64|128)", name)
    return int(m.group(1)) if m else None


def _launch_of(kernel: str, arch: str, D: int | None, case: dict, plans: dict) -> tuple[int, int] | None:
    """(threads, dynamic shared memory) a kernel is launched with, from the host plans; None: never
    launched on that architecture (the probe, the sm_80 stub of the Hopper kernel)."""
    if "probe" in kernel or ("fwd_sm90_kernel" in kernel and arch != "sm_90a"):
        return None
    key = lambda kind: plans[(kind, D, json.dumps(case, sort_keys=True))]  # noqa: E731
    if "fwd_sm80_kernel" in kernel:
        return key("fwd80")["main"]["threads"], key("fwd80")["main"]["smem"]
    if "fwd_sm90_kernel" in kernel:
        return key("fwd90")["main"]["threads"], key("fwd90")["main"]["smem"]
    if "bwd_dq_kernel" in kernel:
        return key("bwd")["dq"]["threads"], key("bwd")["dq"]["smem"]
    if "bwd_dkdv_kernel" in kernel:
        return key("bwd")["dkdv"]["threads"], key("bwd")["dkdv"]["smem"]
    return 256, 0  # mask packer, split merge / reductions, backward preprocess (kAuxThreads, no dynamic)


def _ctas_per_sm(regs: int, threads: int, smem: int, lim: dict) -> int:
    """Resident CTAs per SM: registers are allocated per warp in units of 256 (8 per thread) from four
    16K-register quarters; shared memory adds the per-CTA reservation."""
    warps = -(-threads // 32)
    warp_regs = -(-max(regs, 1) // 8) * 8 * 32
    by_regs = (4 * (lim["regs_per_quarter"] // warp_regs)) // warps
    by_smem = lim["smem_sm"] // (smem + lim["smem_reserved"])
    return min(by_regs, by_smem, lim["max_warps"] // warps, lim["max_ctas"])


def _useful_step_flops(D: int) -> int:
    """Useful FLOPs of one 64 x 64 block-pair step of one warpgroup (docs/design.md section 7: 4 bs^2 D)."""
    return 4 * 64 * 64 * D


def _hgmma_flops(counts: dict[str, int]) -> int:
    total = 0
    for shape, n in counts.items():
        m, n_, k = (int(x) for x in shape.split("x"))
        total += 2 * m * n_ * k * n
    return total


def test_static_resources_per_kernel(compiled, host_check):
    """Shared memory per CTA within the limit (every case of SMEM_CASES), at least two CTAs per SM for the
    D = 64 forward, HGMMA work per sm_90a main-loop step equal to the step's useful FLOPs; the backend's
    shared-memory refusal threshold covers every kernel. Prints the table (``pytest -s``)."""
    from bigbird_kernels.backends import cuda as cuda_backend

    plans = {}
    for case in SMEM_CASES:
        ck = json.dumps(case, sort_keys=True)
        for D in (64, 128):
            f80, f90, bwd = host_check([_fwd_query(case, D, False), _fwd_query(case, D, True), _bwd_query(case, D)])
            plans[("fwd80", D, ck)], plans[("fwd90", D, ck)], plans[("bwd", D, ck)] = f80, f90, bwd
    rows, problems = [], []
    for (fname, arch), res in ((k, v) for k, v in compiled.items() if isinstance(k, tuple)):
        assert res.rc == 0, f"nvcc failed for {fname} [{arch}]"
        lim = ARCH_LIMITS[arch]
        for k in res.kernels:
            D = _kernel_D(k.name)
            launches = [_launch_of(k.name, arch, D, case, plans) for case in SMEM_CASES]
            if launches[0] is None:
                continue
            threads, smem = launches[0]
            worst = max(s for _, s in launches) + k.static_smem
            if worst > lim["smem_cta"]:
                problems.append(f"{k.name} [{arch}]: {worst} B shared memory per CTA > {lim['smem_cta']}")
            # _SMEM_NEEDED refuses devices with less opt-in shared memory (sm_86 / sm_89: 99 KB), which run the
            # portable kernels; the Hopper kernel runs only on sm_90 (227 KB)
            if D is not None and "fwd_sm90_kernel" not in k.name and worst > cuda_backend._SMEM_NEEDED[D]:
                problems.append(f"{k.name} [{arch}]: {worst} B > the backend's threshold _SMEM_NEEDED[{D}]")
            ctas = _ctas_per_sm(k.registers, threads, smem + k.static_smem, lim)
            if ctas < 1:
                problems.append(f"{k.name} [{arch}]: does not fit on an SM")
            if D == 64 and ("fwd_sm80_kernel" in k.name or "fwd_sm90_kernel" in k.name) and ctas < 2:
                problems.append(f"{k.name} [{arch}]: {ctas} CTA per SM, the D = 64 forward needs 2")
            hg = ""
            if "fwd_sm90_kernel" in k.name:
                flops, useful = _hgmma_flops(k.hgmma), _useful_step_flops(D)
                hg = "+".join(f"{n}x{s}" for s, n in sorted(k.hgmma.items())) + f" = {flops / useful:.2f}x useful"
                if CUOBJDUMP and flops != useful:
                    problems.append(f"{k.name} [{arch}]: HGMMA per step {k.hgmma} = {flops} FLOPs, useful {useful}")
            rows.append((fname.replace("bigbird_attn_", "").replace(".cu", ""), arch, k.name, k.registers,
                         f"{k.spill_stores}/{k.spill_loads}", threads, k.static_smem + smem, ctas, hg))
    _print_table(rows)
    assert not problems, "\n".join(problems)
    if CUOBJDUMP is None:
        pytest.skip("cuobjdump not found: HGMMA counts not checked (everything else was)")


def _print_table(rows) -> None:
    head = ("file", "arch", "kernel", "regs", "spill st/ld B", "threads", "smem/CTA B", "CTAs/SM", "HGMMA per step")
    case = ", ".join(f"{k}={v}" for k, v in TYPICAL.items())
    lines = ["", f"static resources per kernel (shared memory and CTAs/SM for {case}):",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (r[0], r[1], r[2])):
        lines.append("| " + " | ".join(str(x) for x in r) + " |")
    print("\n".join(lines), file=sys.stderr)


def test_binding_syntax(compiled):
    res = compiled["cpp"]
    if isinstance(res, str):
        pytest.skip(f"binding syntax check not possible here: {res}")
    assert res.rc == 0, f"g++ -fsyntax-only failed for csrc/bigbird_attn.cpp:\n{res.output[-6000:]}"
    assert not res.warnings, "warnings in csrc/bigbird_attn.cpp:\n" + "\n".join(res.warnings)


def test_cuda_backend_imports_and_refuses_without_cuda():
    from bigbird_kernels.backends import cuda as cuda_backend
    from bigbird_kernels.dispatch import AttentionInputs, not_supported_reasons

    inputs = AttentionInputs(device=torch.device("cpu"), dtype=torch.bfloat16, batch=1, num_heads=2, seq_len=256,
                             head_dim=64, block_size=64, num_random_blocks=1, requires_grad=False, has_mask=False,
                             deterministic=False)
    reasons = not_supported_reasons("cuda", inputs)
    assert any("CUDA tensors" in r for r in reasons), reasons
    bad = AttentionInputs(device=torch.device("cpu"), dtype=torch.float32, batch=1, num_heads=2, seq_len=256,
                          head_dim=32, block_size=32, num_random_blocks=1, requires_grad=True, has_mask=True,
                          deterministic=True)
    reasons = not_supported_reasons("cuda", bad)
    assert any("dtype" in r for r in reasons) and any("head dim" in r for r in reasons) and any("block size" in r for r in reasons)
    if torch.version.cuda is None:
        assert any("extension not available" in r and "without CUDA" in r for r in reasons), reasons
        assert "not available" in cuda_backend.extension_status()
