"""FLOPs: the paper convention reproduces the published figures; fvcore counts SDPA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tokbench.harness.cli import main
from tokbench.harness.flops import BUILTIN_MODELS, count_flops, paper_flops, schedule_flops
from tokbench.methods.registry import build_reducer

GOLDEN_FLOPS = Path(__file__).resolve().parent / "data" / "flops.json"  # shared/golden/flops.json, vendored


@pytest.mark.parametrize(
    ("method", "params", "printed"),
    [
        ("full", [], "40.8"),
        ("fastv", ["K=2", "R=0.8"], "9.3"),
        ("holitom", ["retain=0.25"], "7.1"),
        ("holitom", ["retain=0.10"], "2.8"),
        ("holitom", ["retain=0.25", "inner=false"], "8.7"),
        ("holitom", ["retain=0.10", "inner=false"], "3.4"),
        ("divprune", ["retain=0.10"], "3.4"),
    ],
)
def test_cli_prints_the_published_figures(capsys, method, params, printed):
    args = ["flops", "--model", "llava-ov-7b", "--frames", "32", "--method", method]
    for param in params:
        args += ["--param", param]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == printed


def test_schedules_match_golden_flops_exactly():
    golden = json.loads(GOLDEN_FLOPS.read_text())["models"]["Qwen2-7B (LLaVA-OV-7B)"]["rows"]
    dims = BUILTIN_MODELS["llava-ov-7b"]
    for label, params in [
        ("vanilla", ("full", {})),
        ("FastV K=2 R=0.8", ("fastv", {"K": "2", "R": "0.8"})),
        ("HoliTom 10% (K=18, r=0.5)", ("holitom", {"retain": "0.10"})),
        ("HoliTom 25% (K=18, r=0.5)", ("holitom", {"retain": "0.25"})),
        ("HoliTom w/o M 25%", ("holitom", {"retain": "0.25", "inner": "false"})),
    ]:
        result = paper_flops(build_reducer(*params), dims, 32)
        assert result["paper_flops"] == golden[label]["flops"], label
        assert [[s["layers"], s["tokens"]] for s in result["schedule"]] == golden[label]["stages"]


def test_json_output_has_the_schedule(capsys):
    main(["flops", "--model", "llava-ov-0.5b", "--frames", "32", "--method", "fastv", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["visual_tokens"] == 6272 and out["schedule"][0] == {"layers": 2, "tokens": 6272}
    assert out["paper_tflops"] == pytest.approx(schedule_flops([(2, 6272), (22, 3136)], BUILTIN_MODELS["llava-ov-0.5b"]) / 1e12)


def test_model_from_config_json(tiny_checkpoint, capsys):
    main(["flops", "--model", tiny_checkpoint, "--frames", "4", "--method", "full", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["visual_tokens"] == 4 * 4  # 2x2 pooled grid per frame


class Attention(torch.nn.Module):
    def forward(self, q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def test_fvcore_counts_sdpa_quadratically():
    def flops(length):
        q = torch.randn(1, 2, length, 8)
        return count_flops(Attention(), (q, q, q))

    assert flops(32) == 2 * 32 * 32 * 16
    assert flops(64) == 4 * flops(32)


def test_measured_flops_grow_with_visual_tokens(tiny_adapter, video_file):
    from tokbench.harness.runner import Runner, measure_prefill_flops

    full = measure_prefill_flops(Runner(tiny_adapter, build_reducer("full"), 4), video_file, "What?")
    pooled = measure_prefill_flops(Runner(tiny_adapter, build_reducer("uniform_pool", {"tokens": "4"}), 4), video_file, "What?")
    fastv = measure_prefill_flops(Runner(tiny_adapter, build_reducer("fastv", {"K": "1", "R": "0.75"}), 4), video_file, "What?")
    assert pooled < fastv < full


class BufferedProduct(torch.nn.Module):
    def forward(self, a, b):
        out = torch.empty(a.shape[0], b.shape[1])
        return torch.mm(a, b, out=out)


def test_fvcore_counts_a_matmul_into_a_buffer():
    assert count_flops(BufferedProduct(), (torch.randn(3, 5), torch.randn(5, 7))) == 3 * 5 * 7


def test_measured_vqtoken_flops_include_the_clustering(tiny_adapter, video_file):
    from tokbench.harness.runner import Runner, measure_prefill_flops

    def measured(method, params):
        return measure_prefill_flops(Runner(tiny_adapter, build_reducer(method, params), 4), video_file, "What?")

    pooled = measured("uniform_pool", {"tokens": "8"})
    clustered = measured("vqtoken", {"k": "8"})
    assert clustered > pooled  # same tokens into the LLM; k-means is extra work
