"""The constants the C++ backends share with Python come from one source each: the Python values
(eadaprune_kernels/contract.py, sketch.py) and csrc/common/numerics.h must agree, or the native backends would
compute a different threshold than the reference."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from eadaprune_kernels import contract, sketch

HEADER = Path(__file__).resolve().parent.parent / "csrc" / "common" / "numerics.h"


def _header_constants() -> dict[str, float]:
    text = HEADER.read_text()
    return {name: float(value) for name, value in
            re.findall(r"constexpr\s+(?:double|int|int64_t)\s+(k\w+)\s*=\s*([-+0-9.eE]+)(?:LL)?\s*;", text)}


@pytest.mark.parametrize("cpp, module, python", [("kEnergySlack", contract, "ENERGY_SLACK"),
                                                 ("kFlatRtol", contract, "FLAT_RTOL"),
                                                 ("kMaxSketchElements", sketch, "MAX_SKETCH_ELEMENTS")])
def test_header_matches_python(cpp, module, python):
    constants = _header_constants()
    assert cpp in constants, f"{cpp} not found in {HEADER}"
    assert constants[cpp] == getattr(module, python), (cpp, constants[cpp], getattr(module, python))


def test_no_other_copy_of_the_contract_constants_in_csrc():
    """kEnergySlack / kFlatRtol are defined only in numerics.h (CPU and CUDA include it)."""
    csrc = HEADER.parent.parent
    for path in csrc.rglob("*"):
        if path.suffix in (".h", ".cpp", ".cu") and path != HEADER:
            assert not re.search(r"constexpr\s+double\s+k(EnergySlack|FlatRtol)\b", path.read_text()), path
