"""S19.1: a cell adds or replaces a whole list element by its type (the `losses` list)."""

from __future__ import annotations

import pytest

from param_decomp.study.overrides import with_overrides

BASE = {"losses": [{"type": "faithfulness", "coeff": 1.0}, {"type": "smooth_l0", "coeff": 0.1}]}


def test_s19_1_a_mapping_on_a_type_replaces_or_appends_that_element() -> None:
    layerwise = {"coeff": 0.5, "distance": "kl"}
    out = with_overrides(BASE, {"losses.stochastic_recon_layerwise": layerwise})
    assert out["losses"][2] == {"type": "stochastic_recon_layerwise"} | layerwise
    out = with_overrides(BASE, {"losses.smooth_l0": {"coeff": 0.3}})
    assert out["losses"] == [BASE["losses"][0], {"type": "smooth_l0", "coeff": 0.3}]
    assert BASE["losses"][1] == {"type": "smooth_l0", "coeff": 0.1}  # the base is untouched
    with pytest.raises(KeyError, match="no element of type 'importance'"):
        with_overrides(BASE, {"losses.importance.coeff": 1.0})  # a key below a missing element
    with pytest.raises(KeyError, match="index 5 beyond"):
        with_overrides(BASE, {"losses.5": {"coeff": 1.0}})
