import ctypes
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, compile_with, compiler_wrapper, tiny_config
from reference import dot_kernels, train
from reference.config import ConfigError
from reference.cpuinfo import CPUInfo, cpu_info
from reference.dot_kernels import NativeDotKernels, native_dot_kernels, resolve_interaction_kernel
from reference.interaction import DotInteraction, _Dots
from reference.native_build import NativeKernelError, compiler, load_library

SHAPES = [(64, 27, 128), (5, 2, 1), (7, 9, 13), (3, 33, 64), (3, 40, 200), (2, 1, 8)]


ISA_DTYPES = {"amx": torch.bfloat16, "avx512_bf16": torch.bfloat16, "avx512": torch.float32}
ISA_NAMES = {"amx": "AMX", "avx512_bf16": "AVX512_BF16", "avx512": "AVX-512"}
# The AMX kernels on tests/amx_emulation.h's tiles: they run wherever the AVX512_BF16 ones do.
EMULATED_AMX = "amx_emulated"


@pytest.fixture(scope="module")
def emulated_amx_cc(tmp_path_factory) -> Path:
    """A C compiler that builds dot_kernels.c with AMX's instructions emulated in plain C."""
    include = shlex.quote(f"-I{Path(ROOT) / 'tests'}")
    return compiler_wrapper(tmp_path_factory.mktemp("emulated_amx"), f"-DDOT_EMULATE_AMX {include}")[0]


@pytest.fixture(scope="module")
def emulated_amx_library(emulated_amx_cc) -> ctypes.CDLL:
    """dot_kernels.c built by :func:`emulated_amx_cc`; skips where it has no AMX kernels (a CPU
    without AVX512_BF16, which they use too)."""
    kernels_or_skip("avx512_bf16")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CC", str(emulated_amx_cc))
        library = load_library(dot_kernels.SOURCE)
    assert library.dot_compiled() & 2, "built with AVX512_BF16 but without the emulated AMX kernels"
    library.amx_emulation_error.restype = ctypes.c_char_p
    return library


def emulated_or_skip(request) -> NativeDotKernels:
    library = request.getfixturevalue("emulated_amx_library")
    library.amx_emulation_reset()
    request.addfinalizer(lambda: check_no_fault(library))
    return NativeDotKernels(library, torch.bfloat16, "amx")


def check_no_fault(library: ctypes.CDLL) -> None:
    """Nothing the emulated kernels did would have faulted on the hardware."""
    assert library.amx_emulation_error() == b""


def kernels_or_skip(isa: str | None = None, dtype: torch.dtype = torch.bfloat16) -> NativeDotKernels:
    """The kernels for ``isa``'s dtype (else ``dtype``), on ``isa`` where given (else the one a run
    uses); skips where they cannot run."""
    dtype = ISA_DTYPES[isa] if isa else dtype
    try:
        kernels = native_dot_kernels(dtype)
    except NativeKernelError as e:
        pytest.skip(f"native dot kernels not built here: {e}")
    if not kernels.available:
        pytest.skip(f"native dot kernels for {dtype} cannot run here: {kernels.why_not}")
    if isa is not None and isa not in kernels.isas:
        with pytest.raises(NativeKernelError, match=f"cannot run on {ISA_NAMES[isa]} here: "):
            kernels.on(isa)
        pytest.skip(f"native dot kernels cannot run on {isa} here ({kernels.describe()} can)")
    return kernels.on(isa) if isa else kernels


def implementation(request) -> NativeDotKernels:
    return emulated_or_skip(request) if request.param == EMULATED_AMX else kernels_or_skip(request.param)


@pytest.fixture(params=[*ISA_DTYPES, EMULATED_AMX])
def kernels(request) -> NativeDotKernels:
    """Each implementation that can run here, bf16's and fp32's, and the AMX kernels on emulated tiles."""
    return implementation(request)


@pytest.fixture(params=["amx", "avx512_bf16", EMULATED_AMX])
def bf16_kernels(request) -> NativeDotKernels:
    return implementation(request)


def exact(vectors: torch.Tensor, self_interaction: bool) -> torch.Tensor:
    """The interaction's output in fp64, from torch's path (DotInteraction without kernels)."""
    _, n, _ = vectors.shape
    dense, sparse = vectors[:, 0], vectors[:, 1:]
    return DotInteraction(n, self_interaction)(dense, sparse)


def stack(shape, seed: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.5).to(dtype)


def tolerance(expected: torch.Tensor, magnitude: torch.Tensor, dtype: torch.dtype, terms: int) -> torch.Tensor:
    """bf16: summed in fp32 and rounded to bf16 once: within half a bf16 step (at most 2^-8
    relative) of the exact value, plus fp32's rounding over the sum of the products' magnitudes.
    fp32: a sum of ``terms`` products in fp32, in any order (16 lanes, then across them), is within
    (terms + 16) roundings of 2^-24 of the magnitudes' sum."""
    if dtype == torch.bfloat16:
        return 2**-8 * expected.abs() + 2**-20 * magnitude
    return 2**-24 * expected.abs() + (terms + 16) * 2**-24 * magnitude


@pytest.mark.parametrize("self_interaction", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_is_the_exact_interaction_rounded_once(shape, self_interaction, kernels):
    vectors = stack(shape, seed=sum(shape), dtype=kernels.dtype)
    got = kernels.forward(vectors, self_interaction)
    expected = exact(vectors.double(), self_interaction)
    magnitude = exact(vectors.double().abs(), self_interaction)
    assert got.dtype == kernels.dtype and got.shape == expected.shape
    assert torch.equal(got[:, :shape[2]], vectors[:, 0])
    assert ((got.double() - expected).abs() <= tolerance(expected, magnitude, kernels.dtype, shape[2])).all()


@pytest.mark.parametrize("self_interaction", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_is_the_exact_gradient_rounded_once(shape, self_interaction, kernels):
    vectors = stack(shape, seed=sum(shape) + 1, dtype=kernels.dtype)
    grad = stack((shape[0], kernels.width(shape[1], shape[2], self_interaction)), seed=7, dtype=kernels.dtype)
    got = kernels.backward(vectors, grad, self_interaction)
    wide = vectors.double().requires_grad_()
    exact(wide, self_interaction).backward(grad.double())
    magnitude = vectors.double().abs().requires_grad_()
    exact(magnitude, self_interaction).backward(grad.double().abs())
    assert got.dtype == kernels.dtype and got.shape == vectors.shape
    assert ((got.double() - wide.grad).abs() <= tolerance(wide.grad, magnitude.grad, kernels.dtype, shape[1] + 1)).all()


def test_a_sum_halfway_between_two_bf16_values_rounds_to_even(bf16_kernels):
    """1 + 3 * 2^-8 lies halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): truncating gives the first."""
    kernels = bf16_kernels
    vectors = torch.tensor([[[1.0, 1.0], [1.0, 3 * 2**-8]]], dtype=torch.bfloat16)
    assert kernels.forward(vectors, False)[0, 2].item() == 1 + 2**-6
    # Vector 0's first value: its own gradient (3 * 2^-8) plus the pair's (1) times vector 1's (1).
    grad = torch.tensor([[3 * 2**-8, 0.0, 1.0]], dtype=torch.bfloat16)
    assert kernels.backward(vectors, grad, False)[0, 0, 0].item() == 1 + 2**-6


def test_results_do_not_depend_on_the_thread_count(kernels):
    vectors = stack((33, 27, 128), seed=3, dtype=kernels.dtype)
    grad = stack((33, 128 + 351), seed=4, dtype=kernels.dtype)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append((kernels.forward(vectors, False), kernels.backward(vectors, grad, False)))
    finally:
        torch.set_num_threads(before)
    for forward, backward in results[1:]:
        assert torch.equal(forward, results[0][0]) and torch.equal(backward, results[0][1])


@pytest.mark.parametrize("isa", ISA_DTYPES)  # the hardware's tiles: the emulated ones are no one else's
def test_torchs_own_bf16_gemms_are_unchanged_after_the_kernels(isa):
    """The kernels configure AMX's tiles on torch's threads, whose tiles oneDNN's GEMMs use too
    (the kernels put each thread's configuration back): the GEMMs give the same bits after them."""
    kernels = kernels_or_skip(isa)
    a, b = stack((512, 384), seed=5), stack((384, 256), seed=6)
    batched = stack((64, 27, 128), seed=8)
    before = torch.mm(a, b), torch.bmm(batched, batched.transpose(1, 2))
    mine = batched.to(kernels.dtype)
    kernels.backward(mine, kernels.forward(mine, False), False)
    after = torch.mm(a, b), torch.bmm(batched, batched.transpose(1, 2))
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])


def test_the_module_uses_the_kernels_in_their_dtype_on_the_cpu_only(kernels):
    plain, native = DotInteraction(27), DotInteraction(27)
    native.use_native_kernels(kernels)
    generator = torch.Generator().manual_seed(5)
    dense, sparse = torch.randn(16, 128, generator=generator), torch.randn(16, 26, 128, generator=generator)
    bf16 = kernels.dtype == torch.bfloat16

    def run(module, autocast: bool):
        d, s = dense.clone().requires_grad_(), sparse.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = module(d, s)
        out.float().pow(2).sum().backward()
        return out, (d.grad, s.grad)

    # The other dtype: torch's ops either way, bit for bit.
    other = [run(module, autocast=not bf16) for module in (plain, native)]
    assert torch.equal(other[0][0], other[1][0])
    # Elsewhere than on the CPU (the meta device: shapes only): torch's ops, which run anywhere.
    on_meta = _Dots.apply(dense.to(kernels.dtype).to("meta"), sparse.to(kernels.dtype).to("meta"),
                          native.lower.to("meta"), native.upper.to("meta"), native.diagonal.to("meta"), kernels.dtype,
                          False, kernels)
    assert on_meta.device.type == "meta" and on_meta.shape == (16, 128 + 351)
    (expected, expected_grads), (got, got_grads) = [run(module, autocast=bf16) for module in (plain, native)]
    stack = torch.cat([dense[:, None], sparse], dim=1).to(kernels.dtype)
    assert torch.equal(got, kernels.forward(stack, False))  # the kernels' output, bit for bit
    assert got.dtype == kernels.dtype and {g.dtype for g in got_grads} == {torch.float32}
    # Both round sums of many terms, differently (and torch's GEMMs by their own rules, which may
    # depend on the buffers' alignment): compared at each tensor's own scale. The exact bounds are
    # the tests above; here, that the module's results are the kernels' and near torch's.
    rtol = 2**-7 if bf16 else 2**-16
    for a, b in zip((got.float(), *got_grads), (expected.float(), *expected_grads), strict=True):
        torch.testing.assert_close(a, b, rtol=2 * rtol, atol=2 * rtol * b.abs().max().item())


TILE_PROBE = r"""
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
typedef void (*forward_fn)(const void *, int64_t, int64_t, int64_t, int, void *, void *, int);
/* Configures the calling thread's tiles (configured: a palette 1 layout no kernel uses; else none),
 * runs the forward on this thread, and says whether the configuration is as it was. */
int configuration_kept(forward_fn forward, const void *v, int64_t batch, int64_t n, int64_t dim, void *out,
                       void *scratch, int configured) {
  uint8_t mine[64] __attribute__((aligned(64))) = {0}, after[64] __attribute__((aligned(64)));
  mine[0] = 1;
  mine[16 + 2 * 5] = 12; /* tile 5: 12 bytes of 7 rows */
  mine[48 + 5] = 7;
  if (configured) _tile_loadconfig(mine);
  else _tile_release();
  forward(v, batch, n, dim, 0, out, scratch, 1);
  _tile_storeconfig(after);
  return configured ? memcmp(mine, after, 64) == 0 : after[0] == 0;
}
"""


def test_the_kernels_leave_each_threads_tile_configuration_as_they_found_it(tmp_path):
    """oneDNN's GEMMs share the threads' tiles (torch 2.13's configure them before each GEMM, so
    nothing shows there): a configuration loaded before the kernels is there after them, and a
    thread that had none has none."""
    kernels = kernels_or_skip("amx")
    source, library = tmp_path / "probe.c", tmp_path / "probe.so"
    source.write_text(TILE_PROBE)
    subprocess.run([compiler(), "-O2", "-march=native", "-shared", "-fPIC", str(source), "-o",
                    str(library)], check=True)
    probe = ctypes.CDLL(str(library))
    vectors = stack((4, 27, 128), seed=9)
    out = vectors.new_empty(4, kernels.width(27, 128, False))
    scratch = kernels._scratch("forward_scratch", 27, 128, 1)
    forward = ctypes.cast(kernels._lib.dot_forward, ctypes.c_void_p).value
    for configured in (1, 0):
        assert probe.configuration_kept(ctypes.c_void_p(forward), ctypes.c_void_p(vectors.data_ptr()),
                                        ctypes.c_int64(4), ctypes.c_int64(27), ctypes.c_int64(128),
                                        ctypes.c_void_p(out.data_ptr()), ctypes.c_void_p(scratch.data_ptr()),
                                        configured) == 1
    assert torch.equal(out, kernels.forward(vectors, False))


def test_the_amx_kernels_compile_for_a_cpu_with_amx(tmp_path):
    """The emulated tiles accept what the hardware's intrinsics would not compile (a tile number
    that is not a constant, say): the source must also build for AMX itself, on any machine."""
    if shutil.which(compiler()) is None:
        pytest.skip("no C compiler")
    flags = ["-O3", "-march=sapphirerapids", "-fopenmp", "-c", str(dot_kernels.SOURCE), "-o", str(tmp_path / "amx.o")]
    probe = subprocess.run([compiler(), "-march=sapphirerapids", "-x", "c", "-c", "-", "-o", os.devnull],
                           input="", capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"{compiler()} cannot target sapphirerapids: {probe.stderr.strip()[:200]}")
    done = subprocess.run([compiler(), *flags, "-Werror"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    symbols = subprocess.run(["nm", str(tmp_path / "amx.o")], capture_output=True, text=True).stdout
    assert re.search(r" T dot_forward$", symbols, re.M) and re.search(r" T dot_backward$", symbols, re.M)


def test_the_emulated_kernels_leave_each_threads_tile_configuration_as_they_found_it(emulated_amx_library):
    """The test above, on the emulated tiles (so on any CPU), for the backward too: the kernels run
    on the calling thread (one thread), between a configuration set and read back there."""
    library = emulated_amx_library
    kernels = NativeDotKernels(library, torch.bfloat16, "amx")
    vectors = stack((4, 27, 128), seed=9)
    out = vectors.new_empty(4, kernels.width(27, 128, False))
    grad_vectors = torch.empty_like(vectors)
    scratch = max((kernels._scratch(role, 27, 128, 1) for role in ("forward_scratch", "backward_scratch")),
                  key=torch.Tensor.numel)
    mine = (ctypes.c_uint8 * 64)()
    mine[0], mine[16 + 2 * 5], mine[48 + 5] = 1, 12, 7  # palette 1; tile 5: 12 bytes of 7 rows
    runs = {"forward": lambda: kernels._functions["forward"](vectors.data_ptr(), 4, 27, 128, 0, out.data_ptr(),
                                                            scratch.data_ptr(), 1),
            "backward": lambda: kernels._functions["backward"](vectors.data_ptr(), out.data_ptr(), 4, 27, 128, 0,
                                                              grad_vectors.data_ptr(), scratch.data_ptr(), 1)}
    for name, run in runs.items():
        for configured in (True, False):
            library.amx_emulation_reset()
            if configured:
                library.emu_tile_loadconfig(mine)
            else:
                library.emu_tile_release()
            run()
            after = (ctypes.c_uint8 * 64)()
            library.emu_tile_storeconfig(after)
            assert bytes(after) == (bytes(mine) if configured else bytes(64)), (name, configured)
            check_no_fault(library)
    library.emu_tile_release()
    assert torch.equal(out, kernels.forward(vectors, False))
    assert torch.equal(grad_vectors, kernels.backward(vectors, out, False))


def test_the_emulated_kernels_leave_every_threads_tiles_unconfigured_as_they_found_them(emulated_amx_library):
    """The same for the other threads of the team, which no test can configure beforehand: none
    configured before, none after."""
    library = emulated_amx_library
    kernels = NativeDotKernels(library, torch.bfloat16, "amx")
    vectors = stack((12, 27, 128), seed=10)
    grad = stack((12, kernels.width(27, 128, False)), seed=11)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        library.amx_emulation_release_threads(3)
        kernels.forward(vectors, False)
        assert library.amx_emulation_configured_threads(3) == 0
        kernels.backward(vectors, grad, False)
        assert library.amx_emulation_configured_threads(3) == 0
    finally:
        torch.set_num_threads(before)
    check_no_fault(library)


EDGE_OF_MEMORY = """
import ctypes, mmap, os, sys, torch
import itertools
from reference.dot_kernels import SOURCE, NativeDotKernels, native_dot_kernels
from reference.native_build import load_library
on = {isa: native_dot_kernels().on(isa) for isa in native_dot_kernels(torch.bfloat16).isas +
      native_dot_kernels(torch.float32).isas}
if len(sys.argv) > 1:  # and the AMX kernels on emulated tiles, built by the compiler argv[1]
    os.environ["CC"] = sys.argv[1]
    on["amx_emulated"] = NativeDotKernels(load_library(SOURCE), torch.bfloat16, "amx")
isas = list(on)
page = mmap.PAGESIZE
for isa, (n, dim) in itertools.product(isas, ((27, 13), (9, 40), (3, 128))):
    kernels = on[isa]
    batch = 3
    nbytes = batch * n * dim * kernels.dtype.itemsize
    size = (nbytes + page - 1) // page * page
    memory = mmap.mmap(-1, size + page)
    start = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(start + size, page, 0) == 0  # PROT_NONE: a read past the stack faults
    vectors = torch.frombuffer(memory, dtype=kernels.dtype, count=batch * n * dim, offset=size - nbytes)
    vectors = vectors.view(batch, n, dim)
    vectors.copy_(torch.randn(batch, n, dim))
    grad = torch.randn(batch, kernels.width(n, dim, False)).to(kernels.dtype)
    kernels.backward(vectors, grad, False)
    kernels.forward(vectors, False)
    if isa == "amx_emulated":
        kernels._lib.amx_emulation_error.restype = ctypes.c_char_p
        assert kernels._lib.amx_emulation_error() == b"", kernels._lib.amx_emulation_error()
print("ok", *isas)
"""


def test_the_kernels_read_nothing_past_the_stack(emulated_amx_cc):
    """The stack ends where readable memory ends (an odd number of vectors, so that the backward's
    pairs of rows end with half a pair): a read past it would crash the process. The AMX kernels
    run on emulated tiles too, where the CPU has AVX512_BF16."""
    isas = kernels_or_skip().isas + kernels_or_skip(dtype=torch.float32).isas
    command = [sys.executable, "-c", EDGE_OF_MEMORY]
    if "avx512_bf16" in isas:
        isas, command = (*isas, EMULATED_AMX), [*command, str(emulated_amx_cc)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.split() == ["ok", *isas], done.stderr[-2000:]


def test_auto_picks_native_for_the_dot_interaction_on_the_cpu_only():
    kernels = kernels_or_skip()
    amx = {"amx_tile", "amx_bf16"} <= cpu_info().flags and not kernels.amx_note  # AMX built and granted
    assert kernels.isa == kernels.isas[0] == ("amx" if amx else "avx512_bf16")
    assert resolve_interaction_kernel("auto", "dot", "cpu", "bf16") == (
        "native", f"auto: {kernels.describe()}, compiled here with {compiler()}")
    assert resolve_interaction_kernel("native", "dot", "cpu", "bf16") == (
        "native", f"set by interaction_kernel: {kernels.describe()}")
    assert kernels_or_skip(dtype=torch.float32).isas == ("avx512",)
    # fp32's kernels are opt-in: they would change the default fp32 run's sums.
    assert resolve_interaction_kernel("auto", "dot", "cpu", "fp32") == (
        "torch", "auto: fp32 keeps torch's ops, its sums as in every version before (interaction_kernel=native "
                 "computes it on AVX-512 where it runs)")
    assert resolve_interaction_kernel("native", "dot", "cpu", "fp32") == (
        "native", "set by interaction_kernel: AVX-512")
    assert resolve_interaction_kernel("torch", "dot", "cpu", "bf16") == ("torch", "set by interaction_kernel")
    assert resolve_interaction_kernel("auto", "dcn", "cpu", "bf16") == ("torch", "the dcn interaction: torch's ops")
    assert resolve_interaction_kernel("auto", "dot", "cuda", "fp32") == ("torch",
                                                                         "the interaction on cuda: torch's ops")
    with pytest.raises(NativeKernelError, match="on the CPU; this run has the cat interaction"):
        resolve_interaction_kernel("native", "cat", "cpu", "fp32")
    with pytest.raises(ValueError, match=re.escape("instruction set 'amx' for fp32: expected avx512 (amx computes "
                                                   "bf16)")):
        NativeDotKernels(kernels._lib, torch.float32, "amx")
    with pytest.raises(ValueError, match="computes bf16 or fp32, not torch.float16"):
        NativeDotKernels(kernels._lib, torch.float16)
    with pytest.raises(ValueError, match="these native dot kernels compute bf16 CPU tensors, got torch.float32"):
        kernels.forward(stack((2, 3, 4), seed=0, dtype=torch.float32), False)
    with pytest.raises(ValueError, match="unknown interaction kernel 'amx': expected auto, torch, native"):
        resolve_interaction_kernel("amx", "dot", "cpu", "bf16")


def test_the_config_refuses_native_where_it_cannot_compute(easy_data, tmp_path):
    with pytest.raises(ConfigError, match="interaction_kernel: native computes the dot interaction on the CPU; "
                                          "this run has interaction=cat, device=cpu"):
        tiny_config(easy_data, tmp_path, interaction_kernel="native", interaction="cat")
    with pytest.raises(ConfigError, match="interaction_kernel: must be one of auto, torch, native"):
        tiny_config(easy_data, tmp_path, interaction_kernel="amx")


def test_without_amx_the_kernels_run_on_avx512_bf16_and_say_why(fresh_build, tmp_path):
    """Built for a CPU without AMX (a compiler told to leave it out), on any CPU with AVX512_BF16:
    the AVX-512 kernels run; on a CPU that has AMX, the description blames the compiler."""
    if "avx512_bf16" not in cpu_info().flags:
        pytest.skip("no AVX512_BF16 on this CPU")
    usual = native_dot_kernels()
    cc, used = compile_with(fresh_build, tmp_path, "-mno-amx-tile")
    native_dot_kernels.cache_clear()
    dot_kernels._library.cache_clear()
    kernels = native_dot_kernels()
    assert used.exists()  # built by the wrapper, not taken from the cache
    assert kernels.available and kernels.isas == ("avx512_bf16",)
    compiler_blamed = f"the C compiler ({cc}) cannot target this CPU's AMX (gcc 11 and clang 12 can)"
    has_amx = {"amx_tile", "amx_bf16"} <= cpu_info().flags
    assert kernels.describe() == ("AVX512_BF16" + (f" ({compiler_blamed})" if has_amx else ""))
    with pytest.raises(NativeKernelError, match="cannot run on AMX here: " + (
            re.escape(compiler_blamed) if has_amx else "this CPU has no AMX")):
        kernels.on("amx")
    assert resolve_interaction_kernel("auto", "dot", "cpu", "bf16") == (
        "native", f"auto: {kernels.describe()}, compiled here with {cc}")
    fresh_build.setattr(dot_kernels, "cpu_info", lambda: CPUInfo(model="", vendor="", flags=frozenset(
        {"avx512_bf16", "amx_tile", "amx_bf16"})))
    assert NativeDotKernels(kernels._lib).describe() == f"AVX512_BF16 ({compiler_blamed})"
    vectors = stack((5, 27, 128), seed=11)
    grad = stack((5, kernels.width(27, 128, False)), seed=12)
    same = usual.on("avx512_bf16")  # the usual build's AVX-512 kernels, with AMX's beside them or not
    assert torch.equal(kernels.forward(vectors, False), same.forward(vectors, False))
    assert torch.equal(kernels.backward(vectors, grad, False), same.backward(vectors, grad, False))
    with pytest.raises(ValueError, match="unknown instruction set 'avx2': expected amx, avx512_bf16"):
        kernels.on("avx2")


def test_without_avx512_bf16_auto_keeps_torch_and_native_says_why(fresh_build, tmp_path):
    """Built for a CPU without AVX512_BF16 (a compiler told to leave it out), on any CPU: on one that
    has it the compiler is to blame, on one without it the CPU."""
    cc, used = compile_with(fresh_build, tmp_path, "-mno-avx512bf16")
    kernels = native_dot_kernels()
    assert used.exists()
    compiler_blamed = f"the C compiler ({cc}) cannot target this CPU's AVX512_BF16 (gcc 10 and clang 9 can)"
    assert not kernels.available and kernels.isas == ()
    avx512 = {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= cpu_info().flags
    assert native_dot_kernels(torch.float32).isas == (("avx512",) if avx512 else ())  # fp32 needs AVX-512 only
    assert kernels.why_not == (compiler_blamed if "avx512_bf16" in cpu_info().flags
                               else "no AVX512_BF16 on this CPU")
    fresh_build.setattr(dot_kernels, "cpu_info", lambda: CPUInfo(model="", vendor="", flags=frozenset({"avx2"})))
    assert NativeDotKernels(kernels._lib).why_not == "no AVX512_BF16 on this CPU"
    fresh_build.setattr(dot_kernels, "cpu_info", lambda: CPUInfo(model="", vendor="",
                                                                 flags=frozenset({"avx512_bf16"})))
    assert NativeDotKernels(kernels._lib).why_not == compiler_blamed
    fresh_build.setattr(dot_kernels, "cpu_info", lambda: CPUInfo(model="", vendor="", flags=frozenset(
        {"avx512_bf16", "amx_tile", "amx_bf16"})))
    with pytest.raises(NativeKernelError, match=re.escape(f"cannot run on AMX here: the C compiler ({cc}) cannot "
                                                          f"target this CPU's AMX (gcc 11")):
        NativeDotKernels(kernels._lib, isa="amx")  # AMX asked for: its own compiler requirement, not AVX512_BF16's
    assert resolve_interaction_kernel("auto", "dot", "cpu", "bf16") == ("torch", f"auto: {kernels.why_not}: "
                                                                                 f"torch's ops")
    with pytest.raises(NativeKernelError, match="cannot run here: "):
        resolve_interaction_kernel("native", "dot", "cpu", "bf16")
    with pytest.raises(NativeKernelError, match="cannot run here: "):
        kernels.forward(stack((2, 3, 4), seed=0), False)
    with pytest.raises(NativeKernelError, match="cannot run on AVX512_BF16 here: "):
        kernels.on("avx512_bf16")
    with pytest.raises(ValueError, match="cannot run here: "):
        DotInteraction(3).use_native_kernels(kernels)


def test_without_avx512_native_cannot_run_and_says_why(fresh_build, tmp_path):
    """Built for a CPU without AVX-512 (a compiler told to leave it out): no kernels for either dtype."""
    cc, used = compile_with(fresh_build, tmp_path, "-mno-avx512f")
    fp32 = native_dot_kernels(torch.float32)
    assert used.exists() and fp32.isas == () and native_dot_kernels(torch.bfloat16).isas == ()
    needs = "AVX-512 (avx512f, avx512bw, avx512dq, avx512vl)"
    assert fp32.why_not == (f"the C compiler ({cc}) cannot target this CPU's {needs} (gcc 7 and clang 5 can)"
                            if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= cpu_info().flags
                            else f"no {needs} on this CPU")
    fresh_build.setattr(dot_kernels, "cpu_info", lambda: CPUInfo(model="", vendor="", flags=frozenset({"avx2"})))
    assert NativeDotKernels(fp32._lib, torch.float32).why_not == f"no {needs} on this CPU"
    with pytest.raises(NativeKernelError, match=re.escape(f"cannot run here: {fp32.why_not}")):
        resolve_interaction_kernel("native", "dot", "cpu", "fp32")


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_training_on_the_kernels_follows_torchs_and_repeats(easy_data, tmp_path, precision):
    kernels_or_skip(dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
    runs = {}
    for kind in ("torch", "native", "auto"):
        out = io.StringIO()
        cfg = tiny_config(easy_data, tmp_path, precision=precision, interaction_kernel=kind, max_steps=20, seed=2)
        runs[kind] = train.run(cfg, out=out)
        picked = "native" if kind == "native" or (kind == "auto" and precision == "bf16") else "torch"
        assert f"dot interaction: {picked} (" in out.getvalue()
    native, plain = runs["native"].losses, runs["torch"].losses
    assert len(native) == 20
    if precision == "bf16":
        assert runs["auto"].losses == native  # auto picks the kernels here; they repeat
    else:  # auto keeps torch's ops (fp32's kernels are opt-in); the kernels repeat
        again = tiny_config(easy_data, tmp_path, precision=precision, interaction_kernel="native", max_steps=20, seed=2)
        assert runs["auto"].losses == plain and train.run(again, out=io.StringIO()).losses == native
    assert native != plain  # they did run
    assert native == pytest.approx(plain, rel=0.02 if precision == "bf16" else 1e-4)
    with open(runs["native"].summary_path) as f:
        assert json.load(f)["interaction_kernel"] == "native"
