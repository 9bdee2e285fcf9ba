"""Studies that inform the kernel's design before it is built (tools/), kept running on small shapes.

tools/gram_design_numerics.py emulates the Gram design of the Triton-speed issue (power iterations on
G = X_c X_c^T) beside the reference and the exact SVD; its findings are in
bench/results/gram_design_numerics_2026-12-06.md.
"""

from __future__ import annotations

from helpers import import_tool


def test_gram_design_study_compares_every_method_with_the_reference():
    """Every method is run on every image; the reference's sigma_j never exceed the exact ones (the
    sketch's lower-bound property: singular values of Q^T X_c with Q orthonormal), nor do the
    Gram design's with the Z pass; the present design's fp32 arithmetic stays within 1e-5 of the
    reference on sigma_j >= 1e-2 sigma_1, and the centred Gram's cumulative energy within the contract's
    ENERGY_SLACK."""
    study = import_tool("gram_design_numerics")
    summary = study.main(["--n", "96", "--d", "160", "--l", "32", "--images", "1", "--rates", "0.05", "0.3",
                          "--mean-ratios", "0", "3"])
    assert list(summary) == ["reference (float64)", *study.METHODS]
    assert all(s["images"] == 4 for s in summary.values()), summary
    assert summary["reference (float64)"]["above"] == 0
    assert summary["Gram + Z pass"]["above"] == 0, summary["Gram + Z pass"]
    assert summary["fp32 passes"]["err_big"] < 1e-5, summary["fp32 passes"]
    assert 0 < summary["Gram, centred"]["err_e"] < 1e-5, summary["Gram, centred"]
