"""The native C++ CPU backend (eadaprune_kernels._C) against the float64 reference.

Backend-specific checks: the Philox stream, odd sizes and dtypes, padding and unwritten outputs,
flat and non-finite images, the sketch override, every bad argument through the cpu backend, and the
checks that protect memory when the extension is called directly (the same error types).
"""

from __future__ import annotations

import math

import pytest
import torch

import eadaprune_kernels as ek
from eadaprune_kernels.sketch import gaussian_sketch

from helpers import assert_matches_reference, check_result_invariants, make_tokens

_C = pytest.importorskip("eadaprune_kernels._C", reason="native CPU extension not built")

def spectrum_image(batch, n, d, *, decay=0.6, offset=3.0, dtype=torch.float32, seed=0):
    """Tokens with a geometric spectrum sigma_j = decay**j and a common mean token (offset)."""
    return make_tokens(batch, n, d, "geometric", decay=decay, mean_scale=offset, dtype=dtype, seed=seed)


def run(tokens, scores=None, backend="cpu", **kw):
    return ek.adaptive_prune(tokens, scores, backend=backend, **kw)


def assert_padding(out, tokens):
    check_result_invariants(out, tokens, 0, out.indices.shape[-1])


# ------------------------------------------------------------------------------------------------
def test_philox_sketch_matches_python_stream():
    for d, l, seed in [(7, 3, 0), (1024, 16, 12345), (5, 1, 2**32 + 7), (33, 9, 2**63 - 1)]:
        native, python = _C.gaussian_sketch(d, l, seed), gaussian_sketch(d, l, seed)
        assert native.dtype == torch.float32 and native.shape == (d, l)
        # The integer part is bit-exact (a wrong Philox word gives an unrelated sample); libm's
        # logf/cosf may differ from torch's by a few ulps.
        torch.testing.assert_close(native, python, rtol=4e-7, atol=4e-7)
    assert not torch.equal(_C.gaussian_sketch(16, 4, 1), _C.gaussian_sketch(16, 4, 2))


def test_auto_dispatch_picks_cpu():
    assert ek.available_backends("cpu")[0] == "cpu"
    out = ek.adaptive_prune(spectrum_image(2, 16, 8))
    assert out.backend == "cpu"
    assert ek.spectral_budget(spectrum_image(2, 16, 8)).backend == "cpu"


SHAPES = [  # (B, N, D, sketch_size): every N, D, l and B of the issue appears
    (1, 1, 5, 4), (3, 7, 5, 4), (1, 7, 96, 16), (3, 64, 1, 4), (1, 64, 96, 32), (3, 64, 130, 128),
    (1, 200, 96, 128), (3, 200, 130, 16), (1, 577, 5, 1), (3, 577, 96, 32), (1, 577, 130, 128),
    (3, 200, 1, 1), (1, 64, 5, 128),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-N{}-D{}-l{}".format(*s))
def test_matches_reference_on_odd_sizes(shape):
    b, n, d, l = shape
    x = spectrum_image(b, n, d, seed=n * 31 + d)
    for energy, power_iters in [(0.9, 2), (0.99, 1)]:
        kw = dict(energy=energy, sketch_size=l, power_iters=power_iters, seed=n + d)
        out, ref = run(x, **kw), run(x, backend="reference", **kw)
        assert out.backend == "cpu"
        assert_matches_reference(out, ref, energy)
        assert_padding(out, x)
        budget = ek.spectral_budget(x, backend="cpu", **kw)
        assert torch.equal(budget.budgets, out.lengths)
        assert torch.equal(budget.singular_values, out.singular_values)


@pytest.mark.parametrize("shape", [(3, 64, 96, 32), (2, 577, 130, 48), (1, 7, 5, 4)], ids=str)
def test_identical_indices_with_scores(shape):
    b, n, d, l = shape
    x = spectrum_image(b, n, d, seed=5)
    scores = torch.randn(b, n, generator=torch.Generator().manual_seed(1))
    scores[:, ::3] = 0.25  # many exact ties: broken towards the lower index
    kw = dict(energy=0.95, sketch_size=l, max_tokens=min(n, l + 3))
    out, ref = run(x, scores, **kw), run(x, scores, backend="reference", **kw)
    assert_matches_reference(out, ref, 0.95, same_selection=True)
    assert_padding(out, x)


def test_leverage_selection_matches_reference():
    x = spectrum_image(3, 200, 96, decay=0.8, seed=11)
    kw = dict(energy=0.9, sketch_size=32)
    out, ref = run(x, **kw), run(x, backend="reference", **kw)
    assert_matches_reference(out, ref, 0.9)
    # Leverage from the reference's own U: a token may swap only with one of (nearly) equal leverage.
    xc = x.double() - x.double().mean(1, keepdim=True)
    for b in range(3):
        if out.lengths[b] != ref.lengths[b]:
            continue
        k = int(ref.lengths[b])
        u = torch.linalg.svd(xc[b], full_matrices=False).U[:, :k]
        lev = u.square().sum(1)
        cut = lev.sort(descending=True).values[k - 1]
        diff = set(out.indices[b][: k].tolist()) ^ set(ref.indices[b][: k].tolist())
        assert all(abs(lev[i] - cut) <= 1e-3 * lev.max() for i in diff), f"image {b}: {sorted(diff)}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_dtypes(dtype):
    x = spectrum_image(3, 64, 96, dtype=dtype, seed=3)
    scores = torch.randn(3, 64, generator=torch.Generator().manual_seed(2)).to(dtype)
    for sc in (None, scores):
        out, ref = run(x, sc, energy=0.95, sketch_size=32), run(x, sc, backend="reference", energy=0.95, sketch_size=32)
        assert out.tokens.dtype == dtype and out.indices.dtype == torch.int64
        assert out.lengths.dtype == torch.int32 and out.mask.dtype == torch.bool
        assert out.singular_values.dtype == torch.float32 and out.total_energy.dtype == torch.float32
        assert_matches_reference(out, ref, 0.95, same_selection=sc is not None)
        assert_padding(out, x)


def test_float64_keeps_digits_beyond_float32():
    # sigma spread over 1e-6 of sigma_max: a float64 input runs in float64 end to end.
    x = spectrum_image(2, 64, 96, decay=0.7, dtype=torch.float64, seed=8)
    kw = dict(energy=1.0, sketch_size=32, power_iters=3)
    out, ref = run(x, **kw), run(x, backend="reference", **kw)
    assert_matches_reference(out, ref, 1.0, sigma_tol=1e-9)


def test_no_unwritten_output_elements():
    """Every output (and internal buffer) comes from at::empty: fill them with NaN / max-int first."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        assert torch.empty(4).isnan().all()  # the poisoning is active
        x = spectrum_image(3, 200, 130, seed=4)
        x[1] = x[1, :1]  # a flat image
        for scores in (None, torch.rand(3, 200)):
            out = run(x, scores, energy=0.9, sketch_size=16, max_tokens=40, min_tokens=2)
            assert not out.tokens.isnan().any()
            assert not out.singular_values.isnan().any() and not out.total_energy.isnan().any()
            assert int(out.indices.min()) >= -1 and int(out.indices.max()) < 200
            assert int(out.lengths.min()) >= 2 and int(out.lengths.max()) <= 40
            assert_padding(out, x)
            ref = run(x, scores, backend="reference", energy=0.9, sketch_size=16, max_tokens=40, min_tokens=2)
            assert_matches_reference(out, ref, 0.9, same_selection=scores is not None)
        budget = ek.spectral_budget(x, backend="cpu", sketch_size=16)
        assert not budget.singular_values.isnan().any() and not budget.total_energy.isnan().any()
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.utils.deterministic.fill_uninitialized_memory = previous[1]


def test_sketch_matrix_override():
    x = spectrum_image(3, 64, 96, decay=0.85, seed=6)
    omega = torch.randn(96, 8, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    kw = dict(energy=0.9, sketch_size=8, power_iters=0)
    out, ref = run(x, sketch_matrix=omega, **kw), run(x, sketch_matrix=omega, backend="reference", **kw)
    assert_matches_reference(out, ref, 0.9)
    default = run(x, **kw)
    assert not torch.allclose(out.singular_values, default.singular_values, rtol=1e-3, atol=0)
    # The generated sketch, passed explicitly, gives the same result as the seed.
    same = run(x, sketch_matrix=gaussian_sketch(96, 8, 0), **kw)
    torch.testing.assert_close(same.singular_values, default.singular_values, rtol=1e-5, atol=1e-6)


def test_flat_images():
    x = spectrum_image(4, 64, 96, seed=7)
    x[0] = x[0, :1]                                              # exactly equal tokens
    x[1] = 5.0 + 1e-7 * torch.randn(64, 96, generator=torch.Generator().manual_seed(0))  # below FLAT_RTOL
    x[2] = 0.0                                                   # all zero
    kw = dict(energy=0.9, sketch_size=16, min_tokens=3)
    out, ref = run(x, **kw), run(x, backend="reference", **kw)
    for b in range(3):
        assert torch.all(out.singular_values[b] == 0) and out.total_energy[b] == 0
        assert out.lengths[b] == 3 and not out.saturated[b]
        assert torch.equal(out.indices[b][:3], torch.arange(3))  # zero leverage: ties to the lower index
    assert_matches_reference(out, ref, 0.9, same_selection=True)
    assert_padding(out, x)


def test_nonfinite_images_with_validate_false():
    x = spectrum_image(4, 64, 96, seed=12)
    x[1, 3, 5] = float("nan")
    x[2, 0, 0] = float("inf")
    scores = torch.rand(4, 64)
    scores[3, 10] = float("nan")
    for sc in (None, scores):
        kw = dict(energy=0.9, sketch_size=16, max_tokens=20, validate=False)
        out, ref = run(x, sc, **kw), run(x, sc, backend="reference", **kw)
        bad = [1, 2] if sc is None else [1, 2, 3]
        for b in bad:
            assert out.singular_values[b].isnan().all() and out.total_energy[b].isnan()
            assert out.saturated[b] and out.lengths[b] == 20
            assert torch.equal(out.indices[b], torch.arange(20))
        assert_matches_reference(out, ref, 0.9, same_selection=True)
        torch.testing.assert_close(out.tokens, ref.tokens, equal_nan=True, rtol=0, atol=0)
    with pytest.raises(ValueError, match="tokens: expected finite values"):
        run(x)


def test_scale_invariance():
    x = spectrum_image(2, 64, 96, seed=13)
    base = run(x, energy=0.95, sketch_size=32)
    for factor, dtype in [(2.0**100, torch.float64), (1e30, torch.float32), (1e-30, torch.float32), (3.0, torch.float32)]:
        y = (x.double() * factor).to(dtype)
        out = run(y, energy=0.95, sketch_size=32)
        assert torch.equal(out.lengths, base.lengths)
        scaled, expected = out.singular_values.double() / factor, base.singular_values.double()
        assert ((scaled - expected).abs() <= 1e-5 * expected.amax(-1, keepdim=True)).all()


def test_single_image_and_saturation():
    x = torch.randn(50, 40, generator=torch.Generator().manual_seed(0))  # flat spectrum: l=8 cannot hold 99%
    out = run(x, energy=0.99, sketch_size=8, max_tokens=30)
    ref = run(x, backend="reference", energy=0.99, sketch_size=8, max_tokens=30)
    assert out.tokens.shape == (30, 40) and bool(out.saturated) and int(out.lengths) == 30
    assert torch.equal(out.indices, ref.indices) or int(out.lengths) == int(ref.lengths)


# ------------------------------------------------------------------------------------------------
# Bad arguments: checked once, in Python, whatever the backend; the extension called directly checks
# what protects memory (csrc/common/checks.h) with the same error types and argument names.

def _direct(tokens, scores=None, energy=0.9, center=True, sketch_size=8, power_iters=1, min_tokens=1,
            max_tokens=8, seed=0, sketch_matrix=None, cu_seqlens=None, budgets=None, select=True):
    """The extension's one entry point; sketch_size and max_tokens are the RESOLVED l and M."""
    return _C.run(tokens, cu_seqlens, scores, sketch_matrix, budgets, energy, center, sketch_size, power_iters,
                  min_tokens, max_tokens, seed, select)


X = torch.randn(2, 16, 12)
BAD_ARGUMENTS = [  # (name, keyword arguments, the argument the message names, checked at the C++ boundary too)
    ("tokens-not-tensor", dict(tokens=[[1.0]]), "tokens", True),
    ("tokens-int", dict(tokens=torch.ones(2, 16, 12, dtype=torch.int32)), "tokens", True),
    ("tokens-rank4", dict(tokens=torch.zeros(1, 2, 16, 12)), "tokens", True),
    ("tokens-empty", dict(tokens=torch.zeros(2, 0, 12)), "tokens", True),
    ("scores-not-tensor", dict(scores=[0.0] * 16), "scores", True),
    ("scores-int", dict(scores=torch.ones(2, 16, dtype=torch.int64)), "scores", True),
    ("scores-shape", dict(scores=torch.ones(2, 15)), "scores", True),
    ("energy-zero", dict(energy=0.0), "energy", False),
    ("energy-above-one", dict(energy=1.5), "energy", False),
    ("energy-nan", dict(energy=math.nan), "energy", False),
    ("energy-str", dict(energy="0.9"), "energy", True),
    ("energy-bool", dict(energy=True), "energy", True),
    ("center-int", dict(center=1), "center", True),
    ("sketch-size-zero", dict(sketch_size=0), "sketch_size", True),
    ("sketch-size-float", dict(sketch_size=8.0), "sketch_size", True),
    ("sketch-size-bool", dict(sketch_size=True), "sketch_size", True),
    ("power-iters-negative", dict(power_iters=-1), "power_iters", False),
    ("min-tokens-zero", dict(min_tokens=0), "min_tokens", False),
    ("min-above-max", dict(min_tokens=9, max_tokens=8), "min_tokens", False),
    ("max-tokens-above-n", dict(max_tokens=17), "max_tokens", True),
    ("max-tokens-zero", dict(max_tokens=0), "max_tokens", True),
    ("max-tokens-str", dict(max_tokens="4"), "max_tokens", True),
    ("seed-negative", dict(seed=-1), "seed", False),
    ("seed-too-big", dict(seed=2**63), "seed", True),
    ("seed-huge", dict(seed=2**70), "seed", True),
    ("seed-float", dict(seed=1.0), "seed", True),
    ("sketch-not-tensor", dict(sketch_matrix=[[1.0]]), "sketch_matrix", True),
    ("sketch-int", dict(sketch_matrix=torch.ones(12, 8, dtype=torch.int32)), "sketch_matrix", True),
    ("sketch-shape", dict(sketch_matrix=torch.ones(12, 7)), "sketch_matrix", True),
]


def _python_error(kwargs, backend):
    args = dict(tokens=X, scores=None, energy=0.9, center=True, sketch_size=8, power_iters=1, min_tokens=1,
                max_tokens=None, seed=0, sketch_matrix=None)
    args.update(kwargs)
    tokens, scores = args.pop("tokens"), args.pop("scores")
    with pytest.raises((TypeError, ValueError)) as info:
        ek.adaptive_prune(tokens, scores, backend=backend, **args)
    return info.type, str(info.value)


@pytest.mark.parametrize("case", BAD_ARGUMENTS, ids=lambda c: c[0])
def test_bad_arguments_raise_like_the_reference(case):
    """Through the public functions on the cpu backend: the reference's error type and argument name."""
    _, kwargs, name, _ = case
    expected, reference_message = _python_error(kwargs, "reference")
    got, message = _python_error(kwargs, "cpu")
    assert got is expected and message == reference_message, message
    if "scores" not in kwargs:
        args = dict(kwargs)
        tokens = args.pop("tokens", X)
        with pytest.raises(expected, match=f"^{name}:"):
            ek.spectral_budget(tokens, backend="cpu", **{"sketch_size": 8, **args})


@pytest.mark.parametrize("case", [c for c in BAD_ARGUMENTS if c[3]], ids=lambda c: c[0])
def test_cpp_boundary_checks_what_protects_memory(case):
    """The extension called directly raises the Python API's error type, naming the argument."""
    _, kwargs, name, _ = case
    expected, _ = _python_error(kwargs, "reference")
    with pytest.raises(expected) as info:
        _direct(**{"tokens": X, **kwargs})
    assert str(info.value).startswith(f"{name}:") or f"\n{name}:" in str(info.value), str(info.value)
    if "scores" not in kwargs:
        with pytest.raises(expected):
            _direct(**{"tokens": X, **kwargs, "select": False})


def test_cpp_boundary_rank_device_resolved_sizes_and_budgets():
    with pytest.raises(ValueError, match="tokens: expected rank 3"):
        _direct(torch.zeros(16, 12))  # dense input is batched; [T, D] needs cu_seqlens
    with pytest.raises(ValueError, match="tokens: expected a cpu tensor"):
        _direct(torch.zeros(2, 16, 12, device="meta"))
    with pytest.raises(ValueError, match=r"sketch_size: expected the resolved l = min\(sketch_size, N, D\) in \[1, 12\]"):
        _direct(X, sketch_size=13)  # not resolved: the extension would read past D
    with pytest.raises(TypeError, match="budgets: expected dtype int32 or int64"):
        _direct(X, budgets=torch.ones(2))
    with pytest.raises(ValueError, match=r"budgets: expected shape \(2,\)"):
        _direct(X, budgets=torch.ones(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="num_features"):
        _C.gaussian_sketch(0, 4, 0)
    with pytest.raises(TypeError, match="seed"):
        _C.gaussian_sketch(4, 4, "0")


def test_direct_call_with_a_resolved_config_equals_the_public_call():
    """The extension takes the resolved l and M; out-of-range budgets are clamped to [0, M], not read."""
    x = make_tokens(2, 16, 12, "geometric", seed=1)
    kept, indices, lengths, mask, sigma, energy, saturated = _direct(x, sketch_size=12, max_tokens=12)
    ref = run(x, backend="reference", energy=0.9, sketch_size=100, power_iters=1)
    assert sigma.shape == (2, 12) and indices.shape == (2, 12)
    assert torch.equal(lengths, ref.lengths)
    fields = _direct(x, sketch_size=12, max_tokens=12, budgets=torch.tensor([-3, 40], dtype=torch.int32))
    assert fields[2].tolist() == [0, 12] and fields[3].sum(1).tolist() == [0, 12]


@pytest.mark.parametrize("precision", ["medium", "high"])
def test_results_do_not_depend_on_the_float32_matmul_precision(precision):
    """VLM code often calls torch.set_float32_matmul_precision("high" / "medium"): on CPUs with bf16
    (AVX512-BF16 / AMX) "medium" makes oneDNN run fp32 matmuls in bf16 (the pipeline's singular values
    moved by ~2e-3 of sigma_1 before csrc/common/precision_guard.h). The backend computes the same
    bits whatever is set, and the caller's setting is back in force after the call."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 576, 256, generator=g) * torch.logspace(0, -3, 256) + 1.0
    base = ek.adaptive_prune(x, backend="cpu", energy=0.99)
    before = torch.get_float32_matmul_precision()
    a, b = torch.randn(128, 512, generator=g), torch.randn(512, 64, generator=g)
    try:
        torch.set_float32_matmul_precision(precision)
        user_before = a @ b
        got = ek.adaptive_prune(x, backend="cpu", energy=0.99)
        assert torch.get_float32_matmul_precision() == precision
        assert torch.equal(a @ b, user_before), "the caller's matmul precision was not restored"
    finally:
        torch.set_float32_matmul_precision(before)
    for name in ("singular_values", "total_energy", "lengths", "indices", "tokens"):
        assert torch.equal(getattr(got, name), getattr(base, name)), name


def test_empty_batch_through_the_extension():
    """B = 0 called directly (the public functions return before the extension): empty fields of the
    right shapes, as the CUDA extension (which used to launch empty grids) now does too."""
    x = torch.zeros(0, 6, 4)
    budgets, sigma, energy, saturated = _direct(x, sketch_size=4, max_tokens=4, select=False)
    assert budgets.shape == (0,) and sigma.shape == (0, 4) and energy.shape == (0,) and saturated.shape == (0,)
    kept, indices, lengths, mask, *_ = _direct(x, sketch_size=4, max_tokens=4)
    assert kept.shape == (0, 4, 4) and indices.shape == (0, 4) and lengths.shape == (0,) and mask.shape == (0, 4)
