"""Reducer interface: budgets, parameters, registry (incl. entry points), full and uniform_pool."""

from __future__ import annotations

import pytest
import torch

from tokbench.harness.cli import main
from tokbench.methods import registry
from tokbench.methods.base import Budget, BudgetError, MethodError, Reducer, VideoTokens
from tokbench.methods.registry import UnknownMethodError, build_reducer


def video(frames=4, side=4, dim=8) -> VideoTokens:
    torch.manual_seed(0)
    return VideoTokens(features=torch.randn(frames, side, side, dim), newline=torch.zeros(dim))


@pytest.mark.parametrize("retain", [0.0, -0.1, 1.5])
def test_retain_outside_unit_interval(retain):
    with pytest.raises(BudgetError, match="outside"):
        Budget(retain=retain)


def test_token_budgets():
    with pytest.raises(BudgetError, match="below 1"):
        Budget(tokens=0)
    with pytest.raises(BudgetError, match="exceeds"):
        Budget(tokens=100).count(64)
    with pytest.raises(BudgetError, match="keeps no token"):
        Budget(retain=0.001).count(64)
    assert Budget(retain=0.25).count(64) == 16


def test_unknown_method_lists_known_ones():
    with pytest.raises(UnknownMethodError, match="known methods: .*full.*uniform_pool"):
        build_reducer("nosuch")


def test_unknown_parameter_is_named():
    with pytest.raises(MethodError, match="no parameter modee"):
        build_reducer("uniform_pool", {"modee": "avg"})


def test_full_takes_no_budget():
    with pytest.raises(MethodError, match="takes no budget"):
        build_reducer("full", {"retain": "0.5"})


def test_full_keeps_the_default_layout():
    v = video()
    reduced = build_reducer("full").reduce_visual(v)
    assert reduced.count == 4 * 16 + 1
    assert torch.equal(reduced.source_positions, torch.arange(65))


def test_uniform_pool_spatial_and_temporal():
    v = video()
    spatial = build_reducer("uniform_pool", {"retain": "0.25"}).reduce_visual(v)
    assert spatial.count == 4 * 4 + 1 and spatial.info["grid"] == "4x2x2"
    assert torch.allclose(spatial.embeddings[0], v.features[0, :2, :2].mean(dim=(0, 1)))
    temporal = build_reducer("uniform_pool", {"tokens": "2"}).reduce_visual(v)
    assert temporal.count == 2 + 1
    assert torch.allclose(temporal.embeddings[0], v.features[:2].mean(dim=(0, 1, 2)), atol=1e-6)


def test_methods_names_prints_only_names(capsys):
    main(["methods", "--names"])
    names = capsys.readouterr().out.split()
    assert {"full", "uniform_pool", "fastv"} <= set(names)
    assert names == sorted(names)


def test_third_party_entry_point(monkeypatch):
    class Plugin(Reducer):
        summary = "a third-party method"

    class EntryPoint:
        name = "thirdparty"

        def load(self):
            return Plugin

    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "entry_points", lambda group: [EntryPoint()] if group == registry.ENTRY_POINT_GROUP else [])
    try:
        assert registry.get_method("thirdparty") is Plugin
    finally:
        registry._REGISTRY.pop("thirdparty", None)


def test_fastv_rejects_impossible_plans():
    with pytest.raises(MethodError, match="at least 1"):
        build_reducer("fastv", {"K": "0"})
    with pytest.raises(MethodError, match="beyond"):
        build_reducer("fastv", {"K": "30"}).in_llm_layer(28)
    with pytest.raises(MethodError, match="not both"):
        build_reducer("fastv", {"R": "0.5", "retain": "0.5"})
