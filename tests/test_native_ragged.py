"""Ragged batches (packed tokens [T, D] with cu_seqlens [B + 1]) in the native backends (issue 8).

The C++ CPU backend (and the CUDA one where a GPU is present) against the ragged reference (the
tolerances of test_cross_backend.py) and against running each image alone with the same seed; the
argument checks of the extension's ragged functions called directly; and outputs that leave no
element unwritten.
"""

from __future__ import annotations

import pytest
import torch

import eadaprune_kernels as ek
from eadaprune_kernels import allocate_budgets
from eadaprune_kernels.backends import available_backends

from conftest import INT_POISON
from helpers import (assert_close_verbose, assert_matches_reference, assert_ragged_equals_alone, assert_same_result,
                     check_ragged_padding, cu_seqlens_of, ragged_images)

_C = pytest.importorskip("eadaprune_kernels._C", reason="native CPU extension not built")


def _native_params():
    params = [pytest.param("cpu", "cpu", id="cpu")]
    reason = None
    if not torch.cuda.is_available():
        reason = "no CUDA device"
    else:
        try:
            import eadaprune_kernels._C_cuda  # noqa: F401
        except ImportError as exc:
            reason = str(exc)
    params.append(pytest.param("cuda", "cuda", id="cuda", marks=[pytest.mark.skip(reason=reason)] if reason else []))
    return params


NATIVE = _native_params()


def _assert_matches_reference(got, ref, energy, rtol=1e-4):
    return assert_matches_reference(got, ref, energy, sigma_tol=rtol)


SIZES = [1, 9, 40, 40, 40, 23, 2, 8, 300, 1, 7]  # N_i = 1, < L, = L, > L, runs of equal N


@pytest.mark.parametrize("with_scores", [False, True], ids=["leverage", "scores"])
@pytest.mark.parametrize("backend,device", NATIVE)
def test_equals_the_ragged_reference_and_each_image_alone(backend, device, with_scores):
    images = ragged_images(SIZES, 12, seed=5, device=device)
    g = torch.Generator().manual_seed(9)
    scores = [torch.randn(n, generator=g).to(device) for n in SIZES] if with_scores else None
    kwargs = dict(energy=0.9, sketch_size=8, power_iters=1, seed=11, max_tokens=12, min_tokens=2)
    got = ek.adaptive_prune(images, scores, backend=backend, **kwargs)
    assert got.backend == backend and got.tokens.device.type == device
    assert_ragged_equals_alone(got, images, scores, kwargs, backend, exact=False)

    cpu_images = [x.cpu() for x in images]
    cpu_scores = None if scores is None else [s.cpu() for s in scores]
    ref = ek.adaptive_prune(cpu_images, cpu_scores, backend="reference", **kwargs)
    clear = _assert_matches_reference(got, ref, 0.9)
    for name in ("lengths", "indices", "mask", "tokens"):
        assert torch.equal(getattr(got, name).cpu()[clear], getattr(ref, name)[clear]), name

    # packed input with int32 cu_seqlens is the same call
    packed = ek.adaptive_prune(torch.cat(images), None if scores is None else torch.cat(scores),
                               cu_seqlens=cu_seqlens_of(SIZES, torch.int32, device), backend=backend, **kwargs)
    assert_same_result(packed, got)

    budget = ek.spectral_budget(images, backend=backend, **kwargs)
    assert budget.backend == backend and budget.singular_values.shape == (len(SIZES), 8)
    assert torch.equal(budget.budgets, got.lengths)  # finite scores change the selection, not the budgets
    assert_close_verbose(budget.singular_values, got.singular_values, atol=1e-6, rtol=1e-5, what="budget sigma")
    _assert_matches_reference(budget, ek.spectral_budget(cpu_images, backend="reference", **kwargs), 0.9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_dtypes_match_the_reference(dtype):
    sizes = [17, 1, 64, 64, 5, 33]
    images = ragged_images(sizes, 20, seed=7, dtype=dtype)
    scores = torch.randn(sum(sizes), generator=torch.Generator().manual_seed(1)).to(dtype)
    kwargs = dict(energy=0.95, sketch_size=16, power_iters=2, max_tokens=24)
    rtol = 1e-3 if dtype in (torch.float16, torch.bfloat16) else 1e-4
    for sc in (None, scores):  # as test_cross_backend: selection compared where it is set by the scores
        got = ek.adaptive_prune(images, sc, backend="cpu", **kwargs)
        ref = ek.adaptive_prune(images, sc, backend="reference", **kwargs)
        assert got.tokens.dtype == dtype and got.singular_values.dtype == torch.float32
        clear = _assert_matches_reference(got, ref, 0.95, rtol=rtol)
        assert torch.equal(got.lengths[clear], ref.lengths[clear])
        if sc is not None:  # (leverage may tie exactly, e.g. an image of N_i = rank + 1 tokens)
            assert torch.equal(got.indices[clear], ref.indices[clear])
            assert torch.equal(got.tokens[clear], ref.tokens[clear])


def test_sketch_matrix_uses_its_first_columns_per_image():
    sizes = [3, 30, 7, 30]
    images = ragged_images(sizes, 10, seed=14)
    # the generated sketch, passed explicitly, changes nothing: images take the first l_i columns of [D, L]
    generated = ek.adaptive_prune(images, sketch_size=8, seed=4, backend="cpu")
    explicit = ek.adaptive_prune(images, sketch_size=8, sketch_matrix=_C.gaussian_sketch(10, 8, 4), backend="cpu")
    assert_same_result(explicit, generated)
    # another sketch: as the reference and as each image alone with its first l_i columns
    other = torch.randn(10, 8, generator=torch.Generator().manual_seed(3))
    kwargs = dict(sketch_size=8, sketch_matrix=other, energy=0.9)
    got = ek.adaptive_prune(images, backend="cpu", **kwargs)
    assert_ragged_equals_alone(got, images, None, kwargs, "cpu", exact=False)
    _assert_matches_reference(got, ek.adaptive_prune(images, backend="reference", **kwargs), 0.9)
    with pytest.raises(ValueError, match=r"sketch_matrix: expected shape \(10, 8\) = \(D, min\(sketch_size, D\)\)"):
        _C.run(torch.cat(images), cu_seqlens_of(sizes), None, other[:, :3], None, 0.9, True, 8, 1, 1, 8, 0, True)


@pytest.mark.parametrize("backend,device", NATIVE)
def test_single_token_flat_and_nonfinite_images(backend, device):
    sizes = [1, 12, 5, 20, 1, 9]
    images = ragged_images(sizes, 8, seed=12, device=device)
    images[1] = images[1][:1].expand(12, 8).clone()  # flat
    images[2][2, 3] = float("nan")
    scores = [torch.zeros(n, device=device) for n in sizes]
    scores[5][0] = float("inf")
    kwargs = dict(sketch_size=6, max_tokens=7, min_tokens=3, validate=False)
    for sc in (None, scores):
        r = ek.adaptive_prune(images, sc, backend=backend, **kwargs)
        ref = ek.adaptive_prune([x.cpu() for x in images], None if sc is None else [s.cpu() for s in sc],
                                backend="reference", **kwargs)
        for name in ("lengths", "indices", "mask", "saturated"):
            assert torch.equal(getattr(r, name).cpu(), getattr(ref, name)), name
        torch.testing.assert_close(r.tokens.cpu(), ref.tokens, rtol=0, atol=0, equal_nan=True)  # NaN kept as is
        sigma = r.singular_values.cpu()
        # single tokens: l_i = 1, zero spectrum, budget min_i = min(3, 1) = 1
        assert r.lengths[0] == 1 and r.lengths[4] == 1 and bool((sigma[[0, 4]] == 0).all())
        assert r.indices[0].tolist() == [0] + [-1] * 6
        # flat: zero spectrum and energy, min_tokens kept
        assert bool((sigma[1] == 0).all()) and float(r.total_energy[1]) == 0.0 and int(r.lengths[1]) == 3
        # non-finite: l_2 = 5 NaN values then 0, saturated, its first max_2 = 5 tokens
        assert bool(sigma[2, :5].isnan().all()) and bool((sigma[2, 5:] == 0).all())
        assert bool(r.total_energy[2].isnan()) and bool(r.saturated[2]) and r.indices[2].tolist() == [0, 1, 2, 3, 4, -1, -1]
        if sc is not None:  # non-finite scores poison image 5 only
            assert bool(sigma[5].isnan().all()) and r.indices[5].tolist() == list(range(7))
        assert bool(torch.isfinite(sigma[3]).all())


@pytest.mark.parametrize("backend,device", NATIVE)
def test_total_budget_and_budgets_override(backend, device):
    sizes = [2, 300, 1, 170, 45, 9, 45]
    images = ragged_images(sizes, 10, seed=19, device=device)
    kwargs = dict(sketch_size=8, min_tokens=2, max_tokens=12, power_iters=1, energy=0.95)
    maxes = torch.tensor([min(12, n) for n in sizes])
    mins = maxes.clamp(max=2)
    plain = ek.adaptive_prune(images, backend=backend, **kwargs)
    cpu_images = [x.cpu() for x in images]
    ref_plain = ek.adaptive_prune(cpu_images, backend="reference", **kwargs)
    same_plain = torch.equal(plain.lengths.cpu(), ref_plain.lengths)
    for total in (int(mins.sum()), int(maxes.sum()), int(mins.sum()) + 7):
        r = ek.adaptive_prune(images, total_budget=total, backend=backend, **kwargs)
        lengths = r.lengths.cpu()
        assert int(lengths.sum()) == total and int(r.mask.sum()) == total
        assert bool((lengths >= mins).all()) and bool((lengths <= maxes).all()), lengths
        assert torch.equal(lengths, allocate_budgets(plain.lengths.cpu(), total, mins, maxes))
        if same_plain:  # the same needs give the same shares and, with the same leverage, the same tokens
            ref = ek.adaptive_prune(cpu_images, total_budget=total, backend="reference", **kwargs)
            assert torch.equal(lengths, ref.lengths)
            assert torch.equal(r.indices.cpu(), ref.indices)
    with pytest.raises(ValueError, match=r"total_budget: expected between sum\(min_i\)"):
        ek.adaptive_prune(images, total_budget=int(maxes.sum()) + 1, backend=backend, **kwargs)

    # the extension takes the budgets directly: each image keeps its given share, clamped to [0, max_i]
    # (the values of a device tensor are never read on the host; a share past max_i would write past the
    # image's slots)
    if device == "cpu":
        x, cu = torch.cat(images), cu_seqlens_of(sizes)
        given = torch.tensor([2, 12, 1, 3, 7, 9, 2], dtype=torch.int32)  # in [min_i, max_i] of each image
        out = _C.run(x, cu, None, None, given, 0.95, True, 8, 1, 2, 12, 0, True)
        assert torch.equal(out[2], given) and torch.equal(out[3].sum(1).to(torch.int32), given)
        wild = torch.tensor([-4, 13, 2, 3, 7, 100, 2])
        out = _C.run(x, cu, None, None, wild, 0.95, True, 8, 1, 2, 12, 0, True)
        assert out[2].tolist() == [0, 12, 1, 3, 7, 9, 2] and out[3].sum(1).tolist() == [0, 12, 1, 3, 7, 9, 2]
        with pytest.raises(ValueError, match=r"budgets: expected shape \(7,\)"):
            _C.run(x, cu, None, None, torch.ones(6, dtype=torch.int64), 0.95, True, 8, 1, 2, 12, 0, True)
        with pytest.raises(TypeError, match=r"budgets: expected dtype int32 or int64"):
            _C.run(x, cu, None, None, given.float(), 0.95, True, 8, 1, 2, 12, 0, True)


def test_many_images_and_thread_counts_agree():
    """Big runs use the threads inside, small ones are spread over a pool: the answer is the same."""
    g = torch.Generator().manual_seed(8)
    sizes = torch.randint(1, 200, (40,), generator=g).tolist() + [900] + [50] * 5
    images = ragged_images(sizes, 24, seed=1)
    kwargs = dict(energy=0.95, sketch_size=12, power_iters=1, seed=3, max_tokens=16, min_tokens=2)
    got = ek.adaptive_prune(images, backend="cpu", **kwargs)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = ek.adaptive_prune(images, backend="cpu", **kwargs)
    finally:
        torch.set_num_threads(previous)
    for name in ("lengths", "indices", "mask", "tokens", "saturated"):
        assert torch.equal(getattr(got, name), getattr(serial, name)), name
    assert_close_verbose(got.singular_values, serial.singular_values, atol=1e-5, rtol=1e-5, what="sigma")
    assert_ragged_equals_alone(got, images, None, kwargs, "cpu", exact=False)
    ref = ek.adaptive_prune(images, backend="reference", **kwargs)
    clear = _assert_matches_reference(got, ref, 0.95)
    assert torch.equal(got.indices[clear], ref.indices[clear])


def test_no_unwritten_output_elements():
    """Every at::empty of the extension is NaN / sentinel filled (and torch.empty is poisoned by conftest)."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        sizes = [3, 20, 1, 11, 20]
        images = ragged_images(sizes, 10, seed=7, dtype=torch.float16)
        for scores in (None, [torch.randn(n) for n in sizes]):
            r = ek.adaptive_prune(images, scores, sketch_size=5, max_tokens=9, backend="cpu")
            check_ragged_padding(r, images, 9, INT_POISON)
            assert bool((r.lengths >= 1).all())
        budget = ek.spectral_budget(images, sketch_size=5, backend="cpu")
        assert not bool(budget.singular_values.isnan().any()) and not bool(budget.total_energy.isnan().any())
        assert not bool((budget.budgets == INT_POISON).any())
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.utils.deterministic.fill_uninitialized_memory = previous[1]


def test_auto_dispatch_picks_cpu_for_ragged_input():
    assert available_backends("cpu", ragged=True)[0] == "cpu"
    images = ragged_images([4, 9], 6, seed=2)
    assert ek.adaptive_prune(images, sketch_size=3).backend == "cpu"
    assert ek.spectral_budget(images, sketch_size=3).backend == "cpu"


# ---- bad arguments: checked once in Python; the extension called directly checks what protects memory ----

X = torch.randn(10, 4)

CU_CASES = [
    ("float", torch.tensor([0.0, 10.0]), r"cu_seqlens: expected dtype int32 or int64"),
    ("int16", torch.tensor([0, 10], dtype=torch.int16), r"cu_seqlens: expected dtype int32 or int64"),
    ("2d", torch.tensor([[0, 10]]), r"cu_seqlens: expected a 1-D tensor \[B \+ 1\]"),
    ("length-1", torch.tensor([0]), r"cu_seqlens: expected a 1-D tensor \[B \+ 1\] with B >= 1"),
    ("not-tensor", [0, 10], r"cu_seqlens: expected a torch.Tensor"),
    ("other-device", torch.tensor([0, 10], device="meta"), r"cu_seqlens: expected device cpu \(that of tokens\), got meta"),
    ("start", torch.tensor([1, 10]), r"cu_seqlens: expected cu_seqlens\[0\] = 0, got 1"),
    ("end-short", torch.tensor([0, 4, 9]), r"cu_seqlens: expected cu_seqlens\[-1\] = 10 .*got 9"),
    ("end-long", torch.tensor([0, 4, 11]), r"cu_seqlens: expected cu_seqlens\[-1\] = 10 .*got 11"),
    ("decreasing", torch.tensor([0, 6, 4, 10]),
     r"cu_seqlens: expected strictly increasing values, got cu_seqlens\[1\] = 6 > cu_seqlens\[2\] = 4"),
    ("empty-image", torch.tensor([0, 4, 4, 10], dtype=torch.int32),
     r"cu_seqlens: image 1 is empty \(cu_seqlens\[1\] = cu_seqlens\[2\] = 4\)"),
    ("empty-first", torch.tensor([0, 0, 10]), r"cu_seqlens: image 0 is empty"),
    ("negative", torch.tensor([0, -3, 10]), r"cu_seqlens: expected strictly increasing values"),
]


def _python_error_type(call):
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    return info.type


def _direct(tokens, cu_seqlens, scores=None, energy=0.9, center=True, sketch_size=2, power_iters=1, min_tokens=1,
            max_tokens=2, seed=0, sketch_matrix=None, budgets=None, select=True):
    """The extension's one entry point; sketch_size and max_tokens are the RESOLVED L and M."""
    return _C.run(tokens, cu_seqlens, scores, sketch_matrix, budgets, energy, center, sketch_size, power_iters,
                  min_tokens, max_tokens, seed, select)


@pytest.mark.parametrize("case", CU_CASES, ids=[c[0] for c in CU_CASES])
def test_cu_seqlens_checks_on_the_cpu_backend_and_at_the_cpp_boundary(case):
    _, cu, pattern = case
    expected = _python_error_type(lambda: ek.adaptive_prune(X, cu_seqlens=cu, sketch_size=2, backend="reference"))
    with pytest.raises(expected, match=pattern):
        ek.adaptive_prune(X, cu_seqlens=cu, sketch_size=2, backend="cpu")
    if isinstance(cu, torch.Tensor):  # a list is turned away by the bindings' type check
        for select in (True, False):
            with pytest.raises(expected, match=pattern):
                _direct(X, cu, select=select)
    else:
        with pytest.raises(TypeError, match="cu_seqlens: expected a torch.Tensor"):
            _direct(X, cu)


CU = torch.tensor([0, 4, 10])
BAD_ARGUMENTS = [  # (name, keyword arguments, the argument the message names, checked at the C++ boundary too)
    ("tokens-not-tensor", dict(tokens=[[1.0]]), "tokens", True),
    ("tokens-int", dict(tokens=torch.ones(10, 4, dtype=torch.int32)), "tokens", True),
    ("tokens-rank3", dict(tokens=torch.zeros(1, 10, 4)), "tokens", True),
    ("tokens-no-features", dict(tokens=torch.zeros(10, 0)), "tokens", True),
    ("scores-not-tensor", dict(scores=[0.0] * 10), "scores", True),
    ("scores-int", dict(scores=torch.ones(10, dtype=torch.int64)), "scores", True),
    ("scores-shape", dict(scores=torch.ones(9)), "scores", True),
    ("scores-2d", dict(scores=torch.ones(2, 5)), "scores", True),
    ("energy-zero", dict(energy=0.0), "energy", False),
    ("energy-str", dict(energy="0.9"), "energy", True),
    ("center-int", dict(center=1), "center", True),
    ("sketch-size-zero", dict(sketch_size=0), "sketch_size", True),
    ("power-iters-negative", dict(power_iters=-1), "power_iters", False),
    ("min-tokens-zero", dict(min_tokens=0), "min_tokens", False),
    ("min-above-max", dict(min_tokens=5, max_tokens=4), "min_tokens", False),
    ("min-above-default-max", dict(min_tokens=3, sketch_size=2), "min_tokens", False),
    ("max-tokens-zero", dict(max_tokens=0), "max_tokens", True),
    ("seed-negative", dict(seed=-1), "seed", False),
    ("seed-float", dict(seed=1.0), "seed", True),
    ("sketch-int", dict(sketch_matrix=torch.ones(4, 2, dtype=torch.int32)), "sketch_matrix", True),
    ("sketch-shape", dict(sketch_matrix=torch.ones(4, 1)), "sketch_matrix", True),
]


@pytest.mark.parametrize("case", BAD_ARGUMENTS, ids=lambda c: c[0])
def test_bad_ragged_arguments(case):
    """Every case through the public function on the cpu backend raises the reference's error; the
    cases that protect memory also at the C++ boundary."""
    _, kwargs, name, at_boundary = case
    args = dict(tokens=X, scores=None, energy=0.9, center=True, sketch_size=2, power_iters=1, min_tokens=1,
                max_tokens=None, seed=0, sketch_matrix=None)
    args.update(kwargs)
    tokens, scores = args.pop("tokens"), args.pop("scores")
    with pytest.raises((TypeError, ValueError)) as reference_error:
        ek.adaptive_prune(tokens, scores, cu_seqlens=CU, backend="reference", **args)
    expected = reference_error.type
    with pytest.raises(expected) as info:
        ek.adaptive_prune(tokens, scores, cu_seqlens=CU, backend="cpu", **args)
    assert str(info.value) == str(reference_error.value)
    if not at_boundary:
        return
    direct = dict(kwargs)
    if direct.get("max_tokens") is None:
        direct.pop("max_tokens", None)
    with pytest.raises(expected) as info:
        _direct(**{"tokens": X, "cu_seqlens": CU, **direct})
    assert str(info.value).startswith(f"{name}:") or f"\n{name}:" in str(info.value), str(info.value)
    if scores is None:
        with pytest.raises(expected):
            _direct(**{"tokens": X, "cu_seqlens": CU, **direct, "select": False})


def test_cpp_boundary_device_and_max_tokens_not_bounded_by_any_image():
    with pytest.raises(ValueError, match="tokens: expected a cpu tensor"):
        _direct(torch.zeros(10, 4, device="meta"), torch.tensor([0, 10], device="meta"))
    with pytest.raises(ValueError, match=r"sketch_size: expected the resolved l = min\(sketch_size, D\) in \[1, 4\]"):
        _direct(X, CU, sketch_size=100)
    # M = 9 exceeds every N_i: image i keeps at most max_i = min(9, N_i); the widths are the batch's
    kept, indices, lengths, mask, sigma, energy, saturated = _direct(X, CU, sketch_size=4, max_tokens=9)
    assert kept.shape == (2, 9, 4) and sigma.shape == (2, 4)  # L = min(sketch_size, D)
    assert bool((indices[0, 4:] == -1).all()) and bool((sigma[0, 4:] == 0).all())
    ref = ek.adaptive_prune(X, cu_seqlens=CU, sketch_size=100, max_tokens=9, energy=0.9, power_iters=1,
                            backend="reference")
    assert torch.equal(lengths, ref.lengths)


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_ragged_call_under_inference_mode_on_several_threads(mode):
    """Runs spread over worker threads run in the caller's grad / inference mode: under
    torch.inference_mode() the outputs are inference tensors, which a worker outside that mode cannot
    write ("Inplace update to inference tensor outside InferenceMode", seen from the vLLM encoder)."""
    sizes = [36, 70, 72, 5, 9]  # runs small enough to be spread over the pool
    images = ragged_images(sizes, 128, seed=23)
    context = torch.inference_mode() if mode == "inference_mode" else torch.no_grad()
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with context:
            got = ek.adaptive_prune(images, backend="cpu", sketch_size=16)
    finally:
        torch.set_num_threads(previous)
    assert_ragged_equals_alone(got, images, None, dict(sketch_size=16), "cpu", exact=False)
