"""Golden checks for DivPrune (shared/golden/README.md section 1).

``divprune_select_*``: the selection on the stored features with the stored ratio must give
the reference indices exactly, in greedy order, and the reference splice ``keep_indexs``
(system prompt, sorted selection, text) exactly.
"""

from __future__ import annotations

from typing import Any

import torch

from tokbench.methods.divprune import divprune_select


def check_select(record: dict[str, Any]) -> None:
    inputs, outputs = record["inputs"], record["outputs"]
    features = inputs["visual_feature_vectors"]
    n = int(inputs["image_feature_length"])
    k = round(float(inputs["threshold_ratio"]) * n)
    assert k == int(outputs["num_selected"])

    selected = divprune_select(features[:n], k)
    assert torch.equal(selected, outputs["selected"]), "greedy-order selection differs"
    assert torch.equal(selected.sort().values, outputs["selected_sorted"])

    sys_len, seq_len = int(inputs["sys_token_len"]), int(inputs["seq_len"])
    keep = torch.cat([torch.arange(sys_len), selected + sys_len, torch.arange(sys_len + n, seq_len)]).sort().values
    assert torch.equal(keep, outputs["keep_indexs"])


CHECKS = {"divprune_select": check_select}
