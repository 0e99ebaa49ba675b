"""Compile the Triton kernels for real GPU targets without a GPU and check their shared memory.

    python -m bigbird_kernels.backends.triton.compile_check [--full] [--targets 80,90] [--jobs 2]
                                                           [--ptx-only] [--regs] [--json PATH] [--filter TEXT]

Every configuration from :func:`launch.launch_configs` is compiled with ``triton.compile`` for
``GPUTarget("cuda", cc, 32)`` and its ``metadata.shared`` (bytes of shared memory per block) is checked
against the device limit (sm_80: 163 KB, sm_90: 227 KB of dynamic shared memory per block).

By default (the test) the configurations are deduplicated to stay within a few minutes on 2 cores:
per target, one representative per (kernel, element size, tiles, warps, stages, other constexprs),
rotating the input dtype and ``HAS_MASK`` between the targets (sm_90 gets bf16 / fp32 without mask,
the Hopper fast path; sm_80 gets fp16 / fp32 with mask); fp16 and bf16 have the same tiles and
element size, and the mask only adds register loads, so shared memory is the same within a group.
``--full`` compiles every configuration for every target (about 4x longer).

When ``ptxas`` is missing or fails for a target, the kernel is compiled to PTX only (the stages up to
LLVM IR / PTX need no ptxas; shared memory is known after the LLVM IR stage) and reported as such.
``--static`` adds, per compiled configuration, the figures that show a performance regression without a
GPU (:func:`analyze`): registers and spill bytes (``ptxas -v``), CTAs per SM, the tensor-core version of
each ``tl.dot`` with its warp layout (no two warps may compute the same MMA: ``M >= 16 * warpsPerCTA[0]``
and ``N >= instrN * warpsPerCTA[1]``), and the tensor-core FLOPs the PTX issues per pass through the code
against the useful FLOPs of the dots (equal when no work is duplicated). It prints them as a table.

Must run without ``TRITON_INTERPRET=1`` (it would replace the kernels by interpreted functions).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor

SMEM_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
SMEM_PER_SM = {80: 164 * 1024, 86: 100 * 1024, 89: 100 * 1024, 90: 228 * 1024}
REGS_PER_SM = 65536
MAX_WARPS_PER_SM = {80: 64, 86: 48, 89: 48, 90: 64}

_LAYOUT_RE = re.compile(r"^(#mma\d*) = #ttg\.nvidia_mma<\{versionMajor = (\d+).*?warpsPerCTA = \[(\d+), (\d+)\]"
                        r".*?instrShape = \[([\d, ]+)\]", re.M)
_DOT_RE = re.compile(r"= (ttng\.warp_group_dot|tt\.dot) .*?: (?:tensor|!ttg\.memdesc)<(\d+)x(\d+)x\w+"
                     r".*-> tensor<(\d+)x(\d+)xf32, (#\w+)>")
_PTX_MMA_RE = re.compile(r"\b(wgmma\.mma_async\.sync|mma\.sync)\.aligned\.m(\d+)n(\d+)k(\d+)")


def analyze(ttgir: str, ptx: str, num_warps: int) -> dict:
    """Tensor-core figures of one compiled kernel.

    ``dots``: one entry per dot op in the TTGIR, ``"MxNxK v3 [w0,w1]"``; ``mma``: the highest tensor-core
    version used (0: none, fp32 runs on FMA); ``no_duplicate``: every MMA dot satisfies
    ``M >= 16 * warpsPerCTA[0]`` and ``N >= instrN * warpsPerCTA[1]`` (for MMAv3 a warp group of 4 warps
    covers 64 rows); ``useful_flops``: sum of ``2 * M * N * K`` over the dots; ``issued_flops``: the
    tensor-core instructions of the PTX times their FLOPs times the warps (or warp groups) issuing them.
    """
    layouts = {m.group(1): (int(m.group(2)), (int(m.group(3)), int(m.group(4))), [int(x) for x in m.group(5).split(",")])
               for m in _LAYOUT_RE.finditer(ttgir)}
    dots, useful, ok, mma = [], 0, True, 0
    for m in _DOT_RE.finditer(ttgir):
        M, K, N = int(m.group(2)), int(m.group(3)), int(m.group(5))
        assert int(m.group(4)) == M, m.group(0)
        useful += 2 * M * N * K
        ver, (w0, w1), instr = layouts.get(m.group(6), (0, (1, 1), [1, 1]))
        mma = max(mma, ver)
        if ver:
            ok &= M >= 16 * w0 and N >= instr[1] * w1
        dots.append(f"{M}x{N}x{K} v{ver} [{w0},{w1}]" if ver else f"{M}x{N}x{K} fma")
    issued = 0
    for m in _PTX_MMA_RE.finditer(ptx):
        flops = 2 * int(m.group(2)) * int(m.group(3)) * int(m.group(4))
        issued += flops * (num_warps // 4 if m.group(1).startswith("wgmma") else num_warps)
    return dict(mma=mma, dots=dots, no_duplicate=bool(ok), useful_flops=useful if mma else 0, issued_flops=issued)


def ctas_per_sm(cc: int, shared: int, registers: int | None, num_warps: int) -> int:
    """Resident CTAs per SM allowed by shared memory (1 KB reserved per CTA), registers (allocated per
    warp in units of 256) and warps."""
    by_smem = SMEM_PER_SM.get(cc, SMEM_PER_SM[80]) // (shared + 1024)
    by_warps = MAX_WARPS_PER_SM.get(cc, 64) // num_warps
    if registers is None:
        return min(by_smem, by_warps)
    per_warp = -(-registers * 32 // 256) * 256
    return min(by_smem, by_warps, (REGS_PER_SM // per_warp) // num_warps)

# representatives of one group per target in the default (deduplicated) mode: (dtype, HAS_MASK)
_PREFERRED = {
    90: [("bf16", False), ("fp32", False), ("bf16", None), ("fp32", None)],
    80: [("fp16", True), ("fp32", True), ("fp16", None), ("fp32", None)],
}


def _cfg_dtype(cfg) -> str:
    for name in ("Q", "Out", "Dst"):
        if name in cfg["signature"]:
            return cfg["signature"][name][1:]
    raise KeyError(cfg["name"])


def _group_key(cfg):
    dt = _cfg_dtype(cfg)
    consts = {k: v for k, v in cfg["constexprs"].items() if k not in ("HAS_MASK", "DOT_PRECISION")}
    return (cfg["fn"].__name__, 4 if dt == "fp32" else 2, cfg["num_warps"], cfg["num_stages"], tuple(sorted(consts.items())))


def select_jobs(configs, targets, full: bool, text: str | None):
    """[(config index, target cc)] to compile."""
    from .launch import arch_family

    idx = [i for i, c in enumerate(configs) if not text or text in c["name"]]
    if full:
        return [(i, cc) for cc in targets for i in idx if arch_family(cc) in configs[i]["archs"]]
    jobs = []
    for cc in targets:
        groups: dict = {}
        for i in idx:
            if arch_family(cc) in configs[i]["archs"]:
                groups.setdefault(_group_key(configs[i]), []).append(i)
        prefs = _PREFERRED.get(cc, _PREFERRED[90])
        for members in groups.values():
            pick = None
            for dt, mask in prefs:
                for i in members:
                    c = configs[i]
                    m = c["constexprs"].get("HAS_MASK")
                    if _cfg_dtype(c) == dt and (mask is None or m is None or m == mask):
                        pick = i
                        break
                if pick is not None:
                    break
            jobs.append((members[0] if pick is None else pick, cc))
    return jobs


def _attrs_for(cfg):
    """Divisibility hints the JIT gives contiguous, 16-aligned tensors (pointers and 16-multiple ints)."""
    attrs = {}
    for pos, name in enumerate(cfg["fn"].arg_names):
        ty = cfg["signature"][name]
        if ty.startswith("*") or (ty == "i32" and name.startswith("stride")):
            attrs[(pos,)] = [["tt.divisibility", 16]]
    return attrs


def _source(cfg, with_attrs=True):
    import triton

    kw = dict(fn=cfg["fn"], signature=cfg["signature"], constexprs=cfg["constexprs"])
    if with_attrs:
        kw["attrs"] = _attrs_for(cfg)
    return triton.compiler.ASTSource(**kw)


def _ptxas_missing(err: str) -> bool:
    e = err.lower()
    return "ptxas" in e and ("not found" in e or "no such file" in e or "cannot find" in e)


def _compile_ptx_only(src, target, options):
    """triton.compile with the ptxas stage replaced by a stub (no cubin; shared memory still known)."""
    import triton
    from triton.backends.nvidia.compiler import CUDABackend

    orig = CUDABackend.add_stages

    def add_stages(self, stages, options, *args, **kwargs):
        orig(self, stages, options, *args, **kwargs)
        stages["cubin"] = lambda src, metadata: b""

    CUDABackend.add_stages = add_stages
    try:
        return triton.compile(src, target=target, options=options)
    finally:
        CUDABackend.add_stages = orig


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (ptxas)."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _ptxas_usage(ptx: str, cc: int) -> dict:
    """Registers and spill bytes from ``ptxas -v`` (an extra ptxas run; ``--regs`` only)."""
    import re
    import subprocess
    import tempfile

    try:
        from triton.backends.nvidia.compiler import get_ptxas

        try:
            ptxas = get_ptxas(cc).path
        except TypeError:  # older signature
            ptxas = get_ptxas().path
    except Exception as e:
        return dict(ptxas_error=f"{type(e).__name__}: {e}")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        arch = f"sm_{cc}a" if cc >= 90 else f"sm_{cc}"
        r = subprocess.run([ptxas, "-v", f"--gpu-name={arch}", f.name, "-o", os.devnull],
                           capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", r.stderr)
    spill_st = re.search(r"(\d+) bytes spill stores", r.stderr)
    spill_ld = re.search(r"(\d+) bytes spill loads", r.stderr)
    return dict(registers=int(regs.group(1)) if regs else None,
                spill_bytes=(int(spill_st.group(1)) if spill_st else 0) + (int(spill_ld.group(1)) if spill_ld else 0))


def _run_job(job):
    i, cc, ptx_only, want_regs, want_static = job
    import triton
    from triton.backends.compiler import GPUTarget

    from .launch import launch_configs

    cfg = launch_configs()[i]
    target = GPUTarget("cuda", cc, 32)
    options = dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    t0 = time.perf_counter()
    c0 = _cpu_seconds()
    stage, error, compiled = "cubin", None, None
    if not ptx_only:
        for with_attrs in (True, False):  # another Triton version's attrs format: retry without hints
            try:
                compiled = triton.compile(_source(cfg, with_attrs), target=target, options=options)
                break
            except Exception as e:
                error = f"{type(e).__name__}: {e}"[:2000]
    if compiled is None and (ptx_only or _ptxas_missing(error)):
        try:
            compiled = _compile_ptx_only(_source(cfg, False), target, options)
            stage, error = "ptx", None
        except Exception as e:
            error = f"{type(e).__name__}: {e}"[:2000]
    if compiled is None:
        return dict(name=cfg["name"], cc=cc, ok=False, stage="none", shared=None,
                    seconds=round(time.perf_counter() - t0, 2), error=error)
    error = None
    shared = int(compiled.metadata.shared)
    limit = SMEM_LIMIT.get(cc, SMEM_LIMIT[80])
    ok = error is None and shared <= limit
    usage = _ptxas_usage(compiled.asm["ptx"], cc) if (want_regs or want_static) and "ptx" in compiled.asm else {}
    if want_static:
        usage.update(analyze(compiled.asm["ttgir"], compiled.asm["ptx"], cfg["num_warps"]))
        usage["ctas_per_sm"] = ctas_per_sm(cc, shared, usage.get("registers"), cfg["num_warps"])
    return dict(**usage, name=cfg["name"], cc=cc, ok=ok, stage=stage, shared=shared, limit=limit,
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                seconds=round(time.perf_counter() - t0, 2), cpu_seconds=round(_cpu_seconds() - c0, 2),
                error=error or (None if shared <= limit else f"shared memory {shared} B > limit {limit} B"))


def static_table(results) -> str:
    """The ``--static`` figures as a Markdown table, one row per compiled configuration."""
    rows = ["| target | kernel [config] | warps | stages | regs | spill B | shared KB | CTAs/SM | dots (MxNxK, mma, warps) "
            "| issued / useful TC FLOPs |", "|" + "---|" * 10]
    for r in results:
        if "dots" not in r:
            continue
        ratio = f"{r['issued_flops'] / r['useful_flops']:.2f}" if r["useful_flops"] else "fma"
        rows.append(f"| sm_{r['cc']} | {r['name']} | {r['num_warps']} | {r['num_stages']} | {r.get('registers')} | "
                    f"{r.get('spill_bytes')} | {r['shared'] / 1024:.1f} | {r['ctas_per_sm']} | {'; '.join(r['dots'])} | "
                    f"{ratio} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="every configuration for every target")
    ap.add_argument("--targets", default="80,90")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--ptx-only", action="store_true", help="skip ptxas (compile to PTX)")
    ap.add_argument("--regs", action="store_true", help="also report registers and spills (ptxas -v)")
    ap.add_argument("--static", action="store_true",
                    help="also registers, spills, CTAs per SM and tensor-core work per kernel (a table)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--filter", default=None, help="only configurations whose name contains this")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("compile_check: unset TRITON_INTERPRET (the interpreter replaces the kernels)", file=sys.stderr)
        return 2

    import triton

    from .launch import launch_configs

    configs = launch_configs()
    targets = [int(x) for x in args.targets.split(",") if x]
    jobs = [(i, cc, args.ptx_only, args.regs, args.static) for i, cc in select_jobs(configs, targets, args.full, args.filter)]
    # the heaviest first (fp32, big tiles) so the pool ends together
    jobs.sort(key=lambda j: (-("fp32" in configs[j[0]]["name"]), -configs[j[0]]["constexprs"].get("HEAD_DIM", 0)))
    t0 = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as ex:
            results = list(ex.map(_run_job, jobs, chunksize=1))
    else:
        results = [_run_job(j) for j in jobs]
    wall = time.perf_counter() - t0

    results.sort(key=lambda r: (r["cc"], r["name"]))
    for r in results:
        status = "ok" if r["ok"] else "FAIL"
        regs = f" regs={r['registers']} spill={r['spill_bytes']}B" if r.get("registers") is not None else ""
        print(f"sm_{r['cc']} {status:4s} shared={r['shared']!s:>7} B  {r['seconds']:6.1f}s  {r['stage']:5s}{regs}  {r['name']}"
              + (f"  -- {r['error']}" if r.get("error") else ""))
    if args.static:
        print(static_table(results))
    n_bad = sum(not r["ok"] for r in results)
    covered = {configs[i]["name"] for i, *_ in jobs}
    summary = dict(
        triton=triton.__version__, targets=targets, full=args.full, n_configs=len(configs),
        n_jobs=len(jobs), n_configs_compiled=len(covered), n_failed=n_bad, wall_seconds=round(wall, 1),
        cpu_seconds=round(sum(r.get("cpu_seconds", 0.0) for r in results), 1),
        max_shared={cc: max((r["shared"] or 0) for r in results if r["cc"] == cc) for cc in targets},
        spilling=[f"sm_{r['cc']} {r['name']}" for r in results if r.get("spill_bytes")],
    )
    print(json.dumps(summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(summary=summary, results=results,
                           all_configs=[dict(name=c["name"], archs=sorted(c["archs"])) for c in configs]), f, indent=1)
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
