import pytest
import torch
from torch import nn

from reference import linear
from reference.config import Config, ConfigError
from reference.cpuinfo import CPUInfo
from reference.linear import Linear, onednn_available, onednn_bf16_available, resolve_kernel
from reference.model import DLRM, resolve_linear_kernel

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN")
needs_onednn_bf16 = pytest.mark.skipif(not onednn_bf16_available(), reason="oneDNN has no bf16 GEMMs on this CPU")


def pair(in_features, out_features, kernel):
    """An nn.Linear and a Linear(kernel) with the same weights."""
    reference = nn.Linear(in_features, out_features)
    ours = Linear(in_features, out_features, kernel)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def max_relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@needs_onednn
@pytest.mark.parametrize("batch,in_features,out_features", [(2048, 1024, 1024), (256, 479, 1024), (1, 13, 512),
                                                            (37, 256, 1)])
def test_onednn_forward_and_backward_match_nn_linear(batch, in_features, out_features):
    torch.manual_seed(batch + in_features)
    reference, ours = pair(in_features, out_features, "onednn")
    x = torch.randn(batch, in_features)
    upstream = torch.randn(batch, out_features)
    outputs, grads = [], []
    for layer in (reference, ours):
        xi = x.clone().requires_grad_()
        y = layer(xi)
        y.backward(upstream)
        outputs.append(y.detach())
        grads.append((xi.grad, layer.weight.grad, layer.bias.grad))
    assert max_relative(outputs[1], outputs[0]) < 1e-5
    for ours_grad, reference_grad in zip(grads[1], grads[0], strict=True):
        assert max_relative(ours_grad, reference_grad) < 1e-5


@needs_onednn
def test_onednn_is_deterministic():
    torch.manual_seed(0)
    layer = Linear(512, 256, "onednn")
    x = torch.randn(1024, 512)
    runs = []
    for _ in range(2):
        layer.zero_grad()
        y = layer(x)
        y.sum().backward()
        runs.append((y.detach().clone(), layer.weight.grad.clone()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_linear_keeps_nn_linear_state_dict():
    assert list(Linear(4, 3, "aten").state_dict()) == list(nn.Linear(4, 3).state_dict())
    assert isinstance(Linear(4, 3, "aten"), nn.Linear)


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="unknown linear kernel 'blas'.*aten, onednn"):
        Linear(4, 3, "blas")


@needs_onednn
def test_onednn_defers_to_autocast():
    _, ours = pair(64, 32, "onednn")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(torch.randn(8, 64)).dtype == torch.bfloat16


def test_fp32_output_layer_stays_fp32_under_autocast():
    reference, ours = pair(64, 1, "aten")
    ours.fp32_output = True
    x = torch.randn(8, 64).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ours(x)
        assert reference(x).dtype == torch.bfloat16
    assert y.dtype == torch.float32
    assert torch.allclose(y, reference(x.float()), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("vendor,capability,expected", [("AuthenticAMD", "AVX512", "onednn"),
                                                        ("AuthenticAMD", "AVX2", "onednn"),
                                                        ("HygonGenuine", "AVX2", "onednn"),
                                                        ("GenuineIntel", "AVX512", "aten"),
                                                        ("AuthenticAMD", "DEFAULT", "aten"),
                                                        ("", "AVX2", "aten")])
def test_auto_decides_from_the_cpu(monkeypatch, vendor, capability, expected):
    monkeypatch.setattr(linear, "onednn_available", lambda: True)
    monkeypatch.setattr(linear, "cpu_info", lambda: CPUInfo("a CPU", vendor, frozenset()))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    kernel, reason = resolve_kernel("auto")
    assert kernel == expected and reason.startswith("auto: ")
    assert resolve_kernel("aten") == ("aten", "set by linear_kernel")


def test_auto_without_onednn_keeps_aten(monkeypatch):
    monkeypatch.setattr(linear, "onednn_available", lambda: False)
    assert resolve_kernel("auto") == ("aten", "auto: this torch build has no oneDNN")
    with pytest.raises(ValueError, match="this torch build has no oneDNN"):
        resolve_kernel("onednn")


def test_bf16_and_cuda_keep_torch_gemms():
    cfg = Config.from_sources(None, ["precision=bf16"])
    assert resolve_linear_kernel(cfg)[0] == "aten"


def test_onednn_with_bf16_is_a_config_error():
    with pytest.raises(ConfigError, match="command line: linear_kernel: onednn is a kernel for fp32 on CPU"):
        Config.from_sources(None, ["precision=bf16", "linear_kernel=onednn"])
    with pytest.raises(ConfigError, match="linear_kernel: must be one of auto, aten, onednn"):
        Config.from_sources(None, ["linear_kernel=mkl"])


@needs_onednn
def test_model_built_with_a_kernel_uses_it_in_every_layer():
    cfg = Config.from_sources(None, ["linear_kernel=onednn", "embedding_dim=8", "bottom_mlp=13-16-8",
                                     "top_mlp=16-1"])
    model = DLRM.from_config(cfg, [5] * 26)
    kernels = {m.kernel for m in model.modules() if isinstance(m, Linear)}
    assert kernels == {"onednn"}
    assert [m.fp32_output for m in model.top_mlp if isinstance(m, Linear)] == [False, True]


def relu_pair_runs(layer: Linear, x: torch.Tensor, upstream: torch.Tensor, fused: bool, autocast: bool):
    """relu(layer(x)), fused or as two ops, its grad_fn's name, and the gradients of x, weight, bias."""
    layer.zero_grad()
    xi = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = layer.forward_relu(xi) if fused else torch.relu(layer(xi))
    y.backward(upstream.to(y.dtype))
    bias_grad = None if layer.bias is None else layer.bias.grad.clone()
    return y.detach(), type(y.grad_fn).__name__, (xi.grad, layer.weight.grad.clone(), bias_grad)


def assert_same_bits(fused, plain):
    assert fused[0].dtype == plain[0].dtype and torch.equal(fused[0], plain[0])
    for a, b in zip(fused[2], plain[2], strict=True):
        assert (a is None and b is None) or (a.dtype == b.dtype and torch.equal(a, b))


@needs_onednn_bf16
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kernel", ["aten", "onednn"])
@pytest.mark.parametrize("transposed", [False, True])
def test_bf16_relu_fused_into_the_gemm_is_autocasts_linear_and_relu_bit_for_bit(x_dtype, bias, kernel, transposed):
    torch.manual_seed(3)
    layer = Linear(479, 1024, kernel, bias=bias)
    x = torch.randn(479, 512).t() if transposed else torch.randn(512, 479)  # a column-major input too
    x, upstream = x.to(x_dtype), torch.randn(512, 1024)
    fused, plain = (relu_pair_runs(layer, x, upstream, fused, autocast=True) for fused in (True, False))
    assert fused[1] == "_BF16LinearReLUBackward" and plain[1] == "ReluBackward0"
    assert fused[0].dtype == torch.bfloat16 and (fused[0] == 0).any() and (fused[0] > 0).any()
    assert_same_bits(fused, plain)


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("transposed", [False, True])
def test_fp32_relu_fused_on_onednn_is_its_linear_and_relu_bit_for_bit(bias, transposed):
    torch.manual_seed(4)
    layer = Linear(256, 512, "onednn", bias=bias)
    x = torch.randn(256, 300).t() if transposed else torch.randn(300, 256)
    upstream = torch.randn(300, 512)
    fused, plain = (relu_pair_runs(layer, x, upstream, fused, autocast=False) for fused in (True, False))
    assert fused[1] == "_OneDNNLinearBackward" and plain[1] == "ReluBackward0"
    assert_same_bits(fused, plain)


def test_relu_stays_a_separate_op_where_nothing_fuses_it():
    torch.manual_seed(5)
    x, upstream = torch.randn(64, 32), torch.randn(64, 16)
    # fp32 on torch's kernel; the fp32 logit layer under autocast; a 3-d input.
    for layer, x_in, autocast in ((Linear(32, 16, "aten"), x, False),
                                  (Linear(32, 16, "aten", fp32_output=True), x, True)):
        fused, plain = (relu_pair_runs(layer, x_in, upstream, fused, autocast) for fused in (True, False))
        assert fused[1] == plain[1] == "ReluBackward0"
        assert_same_bits(fused, plain)
    layer = Linear(32, 16, "onednn")
    assert type(layer.forward_relu(torch.randn(2, 64, 32, requires_grad=True)).grad_fn).__name__ == "ReluBackward0"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_keeps_the_two_ops_where_onednn_has_no_fused_gemm_for_it(monkeypatch, dtype):
    """fp16 autocast, and bf16 where oneDNN has no bf16 GEMMs (simulated: a CPU with AVX2 alone):
    autocast's linear and ReLU, in autocast's dtype."""
    if dtype == torch.bfloat16:
        monkeypatch.setattr(linear, "onednn_bf16_available", lambda: False)
    layer = Linear(32, 16, "aten")
    x = torch.randn(8, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        y, expected = layer.forward_relu(x), torch.relu(layer(x))
    assert type(y.grad_fn).__name__ == "ReluBackward0" and y.dtype == expected.dtype == dtype
    assert torch.equal(y, expected)


def graph_ops(grad_fn) -> list[str]:
    """The names of the backward ops behind ``grad_fn``, each once."""
    seen, todo = {}, [grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen[node] = type(node).__name__
            todo.extend(next_node for next_node, _ in node.next_functions)
    return sorted(seen.values())


@pytest.mark.parametrize("kernel,precision", [("aten", "fp32"), ("onednn", "fp32"), ("aten", "bf16")])
def test_the_mlps_run_each_linear_and_relu_as_one_with_the_same_results(kernel, precision):
    """DLRM's MLPs (the MLP container) against the same layers in an nn.Sequential: same
    state_dict keys, the same outputs and gradients bit for bit."""
    if kernel == "onednn" and not onednn_available():
        pytest.skip("this torch build has no oneDNN")
    if precision == "bf16" and not onednn_bf16_available():
        pytest.skip("oneDNN has no bf16 GEMMs on this CPU")
    model = DLRM([10, 20, 30], 16, [13, 64, 16], [128, 64, 1], seed=0, linear_kernel=kernel)
    sequential = nn.Sequential(*model.top_mlp)
    assert isinstance(model.top_mlp, linear.MLP)
    assert list(model.top_mlp.state_dict()) == list(sequential.state_dict()) == ["0.weight", "0.bias", "2.weight",
                                                                                 "2.bias", "4.weight", "4.bias"]
    torch.manual_seed(6)
    x = torch.randn(256, model.top_mlp[0].in_features)
    results, ops = [], []
    for mlp in (model.top_mlp, sequential):
        mlp.zero_grad()
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = mlp(xi)
        ops.append(graph_ops(y.grad_fn))
        y.float().pow(2).sum().backward()
        results.append((y.detach(), xi.grad, *(p.grad.clone() for p in mlp.parameters())))
    fused = {"fp32": "_OneDNNLinearBackward", "bf16": "_BF16LinearReLUBackward"}[precision]
    assert ops[1].count("ReluBackward0") == 2
    if kernel == "onednn" or precision == "bf16":
        assert ops[0].count("ReluBackward0") == 0 and ops[0].count(fused) == 2 + (kernel == "onednn")
    else:
        assert ops[0] == ops[1]
    assert results[0][0].dtype == torch.float32  # the logit layer stays fp32
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
