"""Ragged batches: images of different token counts N_i in one call (issue 8).

Packed tokens [T, D] with cu_seqlens [B + 1] (or a list of [N_i, D] tensors) must give, image by
image, what running that image alone gives with the same seed: l_i = min(sketch_size, N_i, D),
max_i = min(max_tokens, N_i) (default l_i), min_i = min(min_tokens, max_i), laid out with widths that
do not depend on the data (M = max_tokens or min(sketch_size, D); L = min(sketch_size, D)).
Triton runs under the interpreter here, so its shapes are small.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from eadaprune_kernels import adaptive_prune, allocate_budgets, randomized_svdvals, spectral_budget
from eadaprune_kernels import backends as backends_module
from eadaprune_kernels.backends import RaggedUnsupported
from eadaprune_kernels.ops import budget_op, prune_op
from eadaprune_kernels.sketch import gaussian_sketch

from conftest import INT_POISON
from helpers import (assert_close_verbose, assert_ragged_equals_alone, check_ragged_padding, config, cu_seqlens_of,
                     knife_edge, ragged_images)

try:
    from eadaprune_kernels.backends import triton_kernel as tb
    TRITON_OK = tb._interpreting()  # these tests pass CPU tensors: the interpreter runs them
    TRITON_WHY = "the Triton backend was loaded without TRITON_INTERPRET=1 (CPU tensors need the interpreter)"
except ImportError as exc:  # no triton installed
    tb, TRITON_OK, TRITON_WHY = None, False, str(exc)

needs_triton = pytest.mark.skipif(not TRITON_OK, reason=TRITON_WHY)
RAGGED_BACKENDS = [pytest.param("reference", id="reference"),
                   pytest.param("triton", id="triton", marks=needs_triton)]


# ---- the reference: the definition ---------------------------------------------------------------


@pytest.mark.parametrize("with_scores", [False, True], ids=["leverage", "scores"])
def test_reference_b64_sizes_up_to_2880_equal_each_image_alone(with_scores):
    g = torch.Generator().manual_seed(8)
    sizes = torch.randint(1, 2881, (64,), generator=g).tolist()
    sizes[:3] = [1, 2, 2880]
    images = ragged_images(sizes, 12, seed=1)
    scores = [torch.randn(n, generator=g) for n in sizes] if with_scores else None
    kwargs = dict(energy=0.95, sketch_size=8, power_iters=1, seed=3, max_tokens=10, min_tokens=2)
    result = adaptive_prune(images, scores, backend="reference", **kwargs)
    assert result.backend == "reference"
    assert_ragged_equals_alone(result, images, scores, kwargs, "reference")
    # packed input with int32 cu_seqlens gives the same result as the list
    packed = adaptive_prune(torch.cat(images), None if scores is None else torch.cat(scores),
                            cu_seqlens=cu_seqlens_of(sizes, torch.int32), backend="reference", **kwargs)
    for name in ("tokens", "indices", "lengths", "mask", "singular_values", "total_energy", "saturated"):
        assert torch.equal(getattr(packed, name), getattr(result, name)), name


@pytest.mark.parametrize("backend", RAGGED_BACKENDS)
def test_equal_sizes_give_the_dense_batch(backend):
    """With every N_i = N the ragged call is the dense [B, N, D] call (an independent check of the layout)."""
    images = ragged_images([24, 24, 24], 10, seed=4)
    dense = torch.stack(images)
    kwargs = dict(energy=0.9, sketch_size=6, power_iters=1, seed=2, max_tokens=8)
    got = adaptive_prune(dense.reshape(-1, 10), cu_seqlens=cu_seqlens_of([24] * 3), backend=backend, **kwargs)
    ref = adaptive_prune(dense, backend=backend, **kwargs)
    for name in ("tokens", "indices", "lengths", "mask", "singular_values", "total_energy", "saturated"):
        assert torch.equal(getattr(got, name), getattr(ref, name)), name
    budgets = spectral_budget(dense.reshape(-1, 10), cu_seqlens=cu_seqlens_of([24] * 3), backend=backend, **kwargs)
    assert torch.equal(budgets.budgets, ref.lengths)


# ---- triton: one launch, same answer ---------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("with_scores", [False, True], ids=["leverage", "scores"])
def test_triton_ragged_equals_each_image_alone_and_the_reference(with_scores, monkeypatch):
    sizes = [1, 9, 40, 23, 2]
    images = ragged_images(sizes, 12, seed=5)
    g = torch.Generator().manual_seed(9)
    scores = [torch.randn(n, generator=g) for n in sizes] if with_scores else None
    kwargs = dict(energy=0.9, sketch_size=8, power_iters=1, seed=11, max_tokens=12, min_tokens=2)

    launches = []
    cls = type(tb._eadaprune_kernel)
    real_run = cls.run

    def counting_run(self, *args, **kw):
        launches.append(kw.get("grid"))
        return real_run(self, *args, **kw)

    monkeypatch.setattr(cls, "run", counting_run)
    got = adaptive_prune(images, scores, backend="triton", **kwargs)
    settings = tb.kernel_settings(torch.float32, 8)
    grid = tb.launch_grid(batch=len(sizes), n=sum(sizes), d=12, settings=settings, ragged=True, power_iters=1,
                          leverage=not with_scores, select=True)
    assert launches == [grid], f"expected one launch with one program per task, got {launches}"
    monkeypatch.undo()

    assert got.backend == "triton"
    # same program arithmetic (same LP = 16, same tiles) for an image alone and inside the packed call
    assert_ragged_equals_alone(got, images, scores, kwargs, "triton", exact=True)
    ref = adaptive_prune(images, scores, backend="reference", **kwargs)
    scale = ref.singular_values.amax(1, keepdim=True).clamp_min(1e-30)
    assert_close_verbose(got.singular_values / scale, ref.singular_values / scale, atol=1e-4, rtol=0,
                         what="sigma / sigma_1")
    assert_close_verbose(got.total_energy, ref.total_energy, atol=1e-6, rtol=1e-4, what="total energy")
    edge = knife_edge(ref.singular_values, ref.total_energy, 0.9, 1e-4)
    assert torch.equal(got.lengths[~edge], ref.lengths[~edge])
    assert torch.equal(got.indices[~edge], ref.indices[~edge])
    assert torch.equal(got.tokens[~edge], ref.tokens[~edge])


@needs_triton
def test_triton_budget_only_and_svdvals_ragged():
    sizes = [17, 1, 30]
    images = ragged_images(sizes, 9, seed=6, dtype=torch.float64)
    got = spectral_budget(images, sketch_size=6, power_iters=1, backend="triton")
    ref = spectral_budget(images, sketch_size=6, power_iters=1, backend="reference")
    assert got.singular_values.shape == (3, 6) and got.budgets.dtype == torch.int32
    edge = knife_edge(ref.singular_values, ref.total_energy, 0.99, 1e-4)
    assert torch.equal(got.budgets[~edge], ref.budgets[~edge])
    scale = ref.singular_values.amax(1, keepdim=True).clamp_min(1e-30)
    assert_close_verbose(got.singular_values / scale, ref.singular_values / scale, atol=1e-4, rtol=0, what="sigma")
    assert bool((got.singular_values[1] == 0).all()), "an image of one token has a zero centred spectrum"
    sv = randomized_svdvals(torch.cat(images), cu_seqlens=cu_seqlens_of(sizes), sketch_size=6, power_iters=1,
                            backend="triton")
    assert torch.equal(sv, got.singular_values)


@needs_triton
def test_triton_writes_every_output_element():
    """torch.empty is NaN / sentinel-poisoned (conftest): nothing of the outputs may stay unwritten."""
    sizes = [3, 20, 1, 11]
    images = ragged_images(sizes, 10, seed=7, dtype=torch.float16)
    for scores in (None, [torch.randn(n) for n in sizes]):
        r = adaptive_prune(images, scores, sketch_size=5, max_tokens=9, backend="triton")
        check_ragged_padding(r, images, 9, INT_POISON)


@needs_triton
def test_triton_kernel_clamps_garbage_cu_seqlens():
    """validate=False trusts a GPU cu_seqlens: the kernel must clamp it, never read or write out of bounds."""
    x = torch.randn(20, 8)
    cfg = config(x, ragged=True, energy=0.9, sketch_size=4, power_iters=0, max_tokens=6)
    garbage = torch.tensor([-5, 50, 3, 3, 1000], dtype=torch.int32)  # out of range, decreasing, empty
    r = tb.run(x, garbage, None, cfg, None, True)
    assert r.tokens.shape == (4, 6, 8)
    assert not bool(r.tokens.isnan().any()) and not bool((r.indices == INT_POISON).any())
    assert bool((r.lengths >= 0).all()) and bool((r.lengths <= 6).all())
    assert bool(((r.indices >= -1) & (r.indices < 20)).all())
    # images clamped to nothing keep no token
    assert r.lengths.tolist()[1:3] == [0, 0]


@pytest.mark.parametrize("backend", RAGGED_BACKENDS)
def test_nonfinite_image_under_validate_false(backend):
    sizes = [12, 5, 20]
    images = ragged_images(sizes, 8, seed=12)
    images[1][2, 3] = float("nan")
    r = adaptive_prune(images, sketch_size=6, max_tokens=7, validate=False, backend=backend)
    # image 1: l_1 = 5 NaN values then 0; saturated; its first max_1 = min(7, 5) = 5 tokens
    assert bool(r.singular_values[1, :5].isnan().all()) and bool((r.singular_values[1, 5:] == 0).all())
    assert bool(r.total_energy[1].isnan()) and bool(r.saturated[1]) and int(r.lengths[1]) == 5
    assert r.indices[1].tolist() == [0, 1, 2, 3, 4, -1, -1]
    assert bool(torch.isfinite(r.singular_values[[0, 2]]).all())
    with pytest.raises(ValueError, match=r"tokens: expected finite values, got NaN or Inf in image\(s\) \[1\]"):
        adaptive_prune(images, sketch_size=6, backend=backend)
    scores = [torch.zeros(n) for n in sizes]
    scores[2][0] = float("inf")
    with pytest.raises(ValueError, match=r"scores: .*image\(s\) \[2\]"):
        adaptive_prune(ragged_images(sizes, 8, seed=12), scores, sketch_size=6, backend=backend)


# ---- semantics at the edges --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", RAGGED_BACKENDS)
def test_single_token_images_and_bounds_per_image(backend):
    sizes = [1, 4, 1, 13]
    images = ragged_images(sizes, 6, seed=13)
    kwargs = dict(sketch_size=16, min_tokens=3, max_tokens=10, power_iters=1)  # L = min(16, 6) = 6
    r = adaptive_prune(images, backend=backend, **kwargs)
    assert r.tokens.shape == (4, 10, 6) and r.singular_values.shape == (4, 6)
    assert r.lengths[0] == 1 and r.lengths[2] == 1  # min_i = min(3, max_i = 1)
    assert r.indices[0].tolist() == [0] + [-1] * 9
    assert torch.equal(r.tokens[2, 0], images[2][0])
    assert bool((r.singular_values[[0, 2]] == 0).all()) and bool((r.total_energy[[0, 2]] == 0).all())
    assert 3 <= int(r.lengths[1]) <= 4 and 3 <= int(r.lengths[3]) <= 10
    if backend == "reference":
        assert_ragged_equals_alone(r, images, None, kwargs, "reference")


def test_default_width_and_sketch_matrix_nested_columns():
    sizes = [3, 30, 7]
    images = ragged_images(sizes, 10, seed=14)
    r = adaptive_prune(images, sketch_size=8, backend="reference")  # M = L = min(8, 10) = 8
    assert r.tokens.shape == (3, 8, 10) and r.singular_values.shape == (3, 8)
    assert int(r.lengths[0]) <= 3 and bool((r.singular_values[0, 3:] == 0).all())
    assert_ragged_equals_alone(r, images, None, dict(sketch_size=8), "reference")
    # the generated sketch is nested in l: an explicit copy of it gives the same answer
    omega = gaussian_sketch(10, 8, seed=0)
    same = adaptive_prune(images, sketch_size=8, sketch_matrix=omega, backend="reference")
    assert torch.equal(same.indices, r.indices) and torch.equal(same.singular_values, r.singular_values)
    other = omega.flip(1).contiguous()
    kwargs = dict(sketch_size=8, sketch_matrix=other)
    assert_ragged_equals_alone(adaptive_prune(images, backend="reference", **kwargs), images, None, kwargs, "reference")
    with pytest.raises(ValueError, match=r"sketch_matrix: expected shape \(10, 8\) = \(D, min\(sketch_size, D\)\)"):
        adaptive_prune(images, sketch_size=8, sketch_matrix=omega[:, :3], backend="reference")


# ---- validation --------------------------------------------------------------------------------------

X = torch.randn(10, 4)

CU_CASES = [
    ("float", torch.tensor([0.0, 10.0]), TypeError, r"cu_seqlens: expected dtype int32 or int64, got torch.float32"),
    ("int16", torch.tensor([0, 10], dtype=torch.int16), TypeError, r"cu_seqlens: .*int16"),
    ("2d", torch.tensor([[0, 10]]), ValueError, r"cu_seqlens: expected a 1-D tensor \[B \+ 1\]"),
    ("length-1", torch.tensor([0]), ValueError, r"cu_seqlens: expected a 1-D tensor \[B \+ 1\] with B >= 1"),
    ("not-tensor", [0, 10], TypeError, r"cu_seqlens: expected a torch.Tensor"),
    ("other-device", torch.tensor([0, 10], device="meta"), ValueError,
     r"cu_seqlens: expected device cpu \(that of tokens\), got meta"),
    ("start", torch.tensor([1, 10]), ValueError, r"cu_seqlens: expected cu_seqlens\[0\] = 0, got 1"),
    ("end-short", torch.tensor([0, 4, 9]), ValueError, r"cu_seqlens: expected cu_seqlens\[-1\] = 10 .*got 9"),
    ("end-long", torch.tensor([0, 4, 11]), ValueError, r"cu_seqlens: expected cu_seqlens\[-1\] = 10 .*got 11"),
    ("decreasing", torch.tensor([0, 6, 4, 10]), ValueError,
     r"cu_seqlens: expected strictly increasing values, got cu_seqlens\[1\] = 6 > cu_seqlens\[2\] = 4"),
    ("empty-image", torch.tensor([0, 4, 4, 10], dtype=torch.int32), ValueError,
     r"cu_seqlens: image 1 is empty \(cu_seqlens\[1\] = cu_seqlens\[2\] = 4\)"),
    ("empty-first", torch.tensor([0, 0, 10]), ValueError, r"cu_seqlens: image 0 is empty"),
]


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("case", CU_CASES, ids=[c[0] for c in CU_CASES])
def test_cu_seqlens_is_checked(case, validate):
    """A CPU cu_seqlens is host data: its values are checked even under validate=False."""
    _, cu, exc, pattern = case
    for call in (lambda: adaptive_prune(X, cu_seqlens=cu, sketch_size=2, validate=validate, backend="reference"),
                 lambda: spectral_budget(X, cu_seqlens=cu, sketch_size=2, validate=validate, backend="reference")):
        with pytest.raises(exc, match=pattern):
            call()


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64], ids=["int32", "int64"])
def test_cu_seqlens_int32_and_int64_agree(dtype):
    images = ragged_images([5, 9], 4, seed=15)
    got = adaptive_prune(torch.cat(images), cu_seqlens=cu_seqlens_of([5, 9], dtype), sketch_size=3, backend="reference")
    ref = adaptive_prune(images, sketch_size=3, backend="reference")
    assert torch.equal(got.indices, ref.indices) and torch.equal(got.lengths, ref.lengths)


def test_ragged_argument_errors():
    images = ragged_images([5, 9], 4, seed=16)
    with pytest.raises(ValueError, match=r"tokens: image 1 is empty \(N_i = 0\)"):
        adaptive_prune([images[0], torch.zeros(0, 4), images[1]], backend="reference")
    with pytest.raises(ValueError, match=r"tokens: expected a non-empty list"):
        adaptive_prune([], backend="reference")
    with pytest.raises(ValueError, match=r"tokens: expected every image with D = 4 .*image 1"):
        adaptive_prune([images[0], torch.randn(3, 5)], backend="reference")
    with pytest.raises(ValueError, match=r"tokens: expected every image with dtype torch.float32"):
        adaptive_prune([images[0], images[1].double()], backend="reference")
    with pytest.raises(TypeError, match=r"cu_seqlens: expected None when tokens is a list"):
        adaptive_prune(images, cu_seqlens=cu_seqlens_of([5, 9]), backend="reference")
    with pytest.raises(ValueError, match=r"tokens: expected packed tokens \[T, D\] \(rank 2\) with cu_seqlens"):
        adaptive_prune(torch.stack([images[0], images[0]]), cu_seqlens=cu_seqlens_of([5, 5]), backend="reference")
    with pytest.raises(ValueError, match=r"scores: expected shape \(14,\) \(packed like tokens\)"):
        adaptive_prune(torch.cat(images), torch.randn(13), cu_seqlens=cu_seqlens_of([5, 9]), backend="reference")
    with pytest.raises(ValueError, match=r"scores: expected image 1's scores of shape \(9,\)"):
        adaptive_prune(images, [torch.randn(5), torch.randn(8)], backend="reference")
    with pytest.raises(ValueError, match=r"min_tokens: expected at most max_tokens = 3, got 4"):
        adaptive_prune(images, sketch_size=3, min_tokens=4, backend="reference")


def test_list_input_with_packed_or_listed_scores():
    sizes = [6, 11, 2]
    images = ragged_images(sizes, 5, seed=17)
    scores = [torch.randn(n) for n in sizes]
    a = adaptive_prune(images, scores, sketch_size=4, backend="reference")
    b = adaptive_prune(images, torch.cat(scores), sketch_size=4, backend="reference")
    c = adaptive_prune(torch.cat(images), torch.cat(scores), cu_seqlens=cu_seqlens_of(sizes), sketch_size=4, backend="reference")
    for r in (b, c):
        assert torch.equal(r.indices, a.indices) and torch.equal(r.tokens, a.tokens)
    # scores decide: the kept tokens are the top-budget scores of each image
    for i, s in enumerate(scores):
        k = int(a.lengths[i])
        top = torch.sort(torch.sort(s, descending=True, stable=True).indices[:k]).values
        assert torch.equal(a.indices[i, :k], top)


# ---- output layouts ----------------------------------------------------------------------------------


def test_packed_with_indices_relative_to_each_image():
    sizes = [7, 1, 15]
    images = ragged_images(sizes, 6, seed=18)
    r = adaptive_prune(images, sketch_size=5, max_tokens=6, backend="reference")
    p = r.packed_with_indices()
    lengths = r.lengths.tolist()
    assert p.cu_seqlens.dtype == torch.int32 and p.cu_seqlens.tolist() == [0, lengths[0], lengths[0] + lengths[1], sum(lengths)]
    assert p.tokens.shape == (sum(lengths), 6) and p.indices.shape == (sum(lengths),)
    for b, x in enumerate(images):
        rows = slice(int(p.cu_seqlens[b]), int(p.cu_seqlens[b + 1]))
        idx = p.indices[rows]
        assert bool((idx >= 0).all()) and bool((idx < sizes[b]).all()) and bool((idx.diff() > 0).all())
        assert torch.equal(p.tokens[rows], x[idx])
    # backward compatible: packed() still returns (tokens, cu_seqlens)
    tokens, cu = r.packed()
    assert torch.equal(tokens, p.tokens) and torch.equal(cu, p.cu_seqlens)
    # and it works on dense and unbatched results too
    one = adaptive_prune(images[2], sketch_size=5, backend="reference").packed_with_indices()
    assert torch.equal(one.tokens, images[2][one.indices]) and one.cu_seqlens.tolist() == [0, one.indices.numel()]


# ---- total_budget ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", RAGGED_BACKENDS)
def test_total_budget_with_ragged_images(backend):
    sizes = [2, 30, 1, 17] if backend == "triton" else [2, 300, 1, 170, 45, 9]
    images = ragged_images(sizes, 10, seed=19)
    kwargs = dict(sketch_size=8, min_tokens=2, max_tokens=12, power_iters=1, energy=0.95)
    maxes = torch.tensor([min(12, n) for n in sizes])
    mins = maxes.clamp(max=2)
    plain = adaptive_prune(images, backend=backend, **kwargs)
    for total in (int(mins.sum()), int(maxes.sum()), int(mins.sum()) + 5):
        r = adaptive_prune(images, total_budget=total, backend=backend, **kwargs)
        assert int(r.lengths.sum()) == total
        assert bool((r.lengths >= mins).all()) and bool((r.lengths <= maxes).all()), r.lengths
        assert torch.equal(r.lengths, allocate_budgets(plain.lengths, total, mins, maxes))
        assert int(r.mask.sum()) == total
    with pytest.raises(ValueError, match=rf"total_budget: expected between sum\(min_i\) = {int(mins.sum())} and "
                                         rf"sum\(max_i\) = {int(maxes.sum())}"):
        adaptive_prune(images, total_budget=int(maxes.sum()) + 1, backend=backend, **kwargs)
    with pytest.raises(ValueError, match=r"total_budget: expected between B = "):
        adaptive_prune(images, total_budget=len(sizes) * 12 + 1, backend=backend, **kwargs)


def test_allocate_budgets_per_image_bounds():
    needs = torch.tensor([50, 1, 50, 10])
    lo = torch.tensor([1, 1, 1, 1])
    hi = torch.tensor([3, 20, 40, 20])
    shares = allocate_budgets(needs, 40, lo, hi)
    assert int(shares.sum()) == 40 and bool((shares <= hi).all()) and bool((shares >= lo).all())
    assert int(shares[0]) == 3  # capped by its own bound, the rest is shared by need
    assert int(shares[2]) > int(shares[3]) > int(shares[1])
    # int bounds and equal tensor bounds agree
    same = allocate_budgets(needs, 30, torch.full((4,), 2), torch.full((4,), 20))
    assert torch.equal(same, allocate_budgets(needs, 30, 2, 20))
    # an infeasible total is not checked (no sync) but never pushes a share past its bound
    assert torch.equal(allocate_budgets(needs, 100, lo, hi), hi.to(torch.int32))
    with pytest.raises(ValueError, match=r"max_tokens: expected an int or a tensor of shape \(4,\)"):
        allocate_budgets(needs, 10, 1, torch.tensor([3, 4]))
    with pytest.raises(TypeError, match=r"min_tokens: expected an int or a \[B\] integer tensor"):
        allocate_budgets(needs, 10, torch.ones(4), 5)


# ---- dispatch and custom ops -------------------------------------------------------------------------


def test_backend_without_ragged_support_raises(monkeypatch):
    fake = types.ModuleType("_eadaprune_fake_dense_backend")
    fake.NAME = "fake-dense"
    fake.SUPPORTS_RAGGED = False
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setitem(backends_module.BACKENDS, "fake-dense", (fake.__name__, frozenset({"cpu"})))
    monkeypatch.setitem(backends_module.AUTO_ORDER, "cpu", ("fake-dense", "reference"))
    images = ragged_images([4, 6], 5, seed=20)
    with pytest.raises(RaggedUnsupported, match=r"backend 'fake-dense' does not support ragged input"):
        adaptive_prune(images, sketch_size=3, backend="fake-dense")
    with pytest.raises(NotImplementedError, match=r"'fake-dense'"):
        spectral_budget(images, sketch_size=3, backend="fake-dense")
    monkeypatch.setenv("EADAPRUNE_BACKEND", "fake-dense")
    with pytest.raises(RuntimeError, match=r"'fake-dense' \(from \$EADAPRUNE_BACKEND\) does not support ragged"):
        adaptive_prune(images, sketch_size=3)
    monkeypatch.delenv("EADAPRUNE_BACKEND")
    # "auto" skips it for ragged input (and would still pick it for dense input)
    assert adaptive_prune(images, sketch_size=3).backend == "reference"
    assert backends_module.available_backends("cpu", ragged=True) == ["reference"]
    # the op refuses it too, at its own dispatch point
    x, cu = torch.cat(images), cu_seqlens_of([4, 6])
    with pytest.raises(RaggedUnsupported):
        budget_op(x, cu, None, 0.9, True, 3, 1, 1, 3, 0, "fake-dense", True)


@pytest.mark.parametrize("with_scores", [False, True])
def test_ragged_ops_pass_opcheck(with_scores):
    x = torch.randn(19, 6)
    cu = torch.tensor([0, 4, 5, 19], dtype=torch.int32)
    scores = torch.randn(19) if with_scores else None
    torch.library.opcheck(prune_op, (x, cu, scores, None, 0.9, True, 4, 1, 1, 7, 0, "reference", True))
    torch.library.opcheck(budget_op, (x, cu, None, 0.9, True, 4, 1, 1, 7, 0, "reference", True, 9))


def test_torch_compile_fullgraph_traces_a_ragged_call():
    def pipeline(x, cu, scores):
        result = adaptive_prune(x, scores, cu_seqlens=cu, sketch_size=4, energy=0.9, max_tokens=6)
        shared = adaptive_prune(x, cu_seqlens=cu, sketch_size=4, energy=0.9, max_tokens=6, total_budget=9)
        budgets = spectral_budget(x, cu_seqlens=cu, sketch_size=4, energy=0.9).budgets
        return result.tokens.sum(-1), result.indices, result.lengths, shared.lengths, budgets

    sizes = [5, 16, 1]
    x, cu, scores = torch.cat(ragged_images(sizes, 8, seed=21)), cu_seqlens_of(sizes), torch.randn(22)
    compiled = torch.compile(pipeline, fullgraph=True, backend="aot_eager")
    for got, expected in zip(compiled(x, cu, scores), pipeline(x, cu, scores)):
        assert torch.equal(got, expected)
    # other lengths, same B and T: the same graph, each call its own answer
    cu2 = cu_seqlens_of([10, 2, 10])
    for got, expected in zip(compiled(x, cu2, None), pipeline(x, cu2, None)):
        assert torch.equal(got, expected)
    bad = torch.tensor([0, 10, 10, 22])
    with pytest.raises(ValueError, match=r"cu_seqlens: image 1 is empty"):
        compiled(x, bad, None)


@needs_triton
@pytest.mark.parametrize("ragged", [False, True], ids=["dense", "packed"])
def test_triton_statistics_grouping_changes_no_bit(ragged, monkeypatch):
    """The statistics stage takes ceil(tiles / STATS_TASKS) row tiles per task (its outputs are per
    tile): 1, 2 or 3 tiles per task must give the same bits, dense and packed."""
    sizes = [150, 1, 70, 200] if ragged else [150, 150]
    images = ragged_images(sizes, 12, seed=12)
    tokens = images if ragged else torch.stack(images)
    kwargs = dict(energy=0.9, sketch_size=8, power_iters=1, seed=3, max_tokens=20)
    settings = tb.kernel_settings(torch.float32, 8)
    n = sum(sizes) if ragged else sizes[0]
    results, groups = [], []
    for tasks in (tb.STATS_TASKS, 3, 1):
        monkeypatch.setattr(tb, "STATS_TASKS", tasks)
        plan = tb.launch_plan(batch=len(sizes), n=n, d=12, settings=settings, ragged=ragged, power_iters=1,
                              leverage=True, select=True)
        groups.append(plan["SR"] // settings["BR"])
        results.append(adaptive_prune(tokens, backend="triton", **kwargs))
    assert len(set(groups)) == 3, f"expected three different tiles per task, got {groups}"
    for r in results[1:]:
        for name in ("tokens", "indices", "lengths", "mask", "singular_values", "total_energy", "saturated"):
            assert torch.equal(getattr(r, name), getattr(results[0], name)), name
