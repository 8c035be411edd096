"""lmms-eval model class ``tokbench``: any registered reduction method on any supported checkpoint.

Registered through the ``lmms_eval.models`` entry-point group (lmms-eval 0.7 reads only its
V2 registry; the payload is ``tokbench.harness.lmms_manifest.manifest``), so this works from
the shell::

    lmms-eval eval --model tokbench \\
        --model_args pretrained=PATH,method=uniform_pool,retain=0.25,max_frames_num=16 \\
        --tasks synthvqa --include_path tasks

Model args: ``pretrained``, ``method``, ``max_frames_num``, ``device``, ``dtype``,
``attn_implementation``, ``max_new_tokens`` (cap), ``accounting_path`` (write per-sample
accounting as JSONL), the model family's own options (``harness/models/__init__.py``
``OPTIONS``: LLaVA-Video's ``geometry``, ``add_time_instruction``, ``video_fps``,
``force_sample``); every other key is a parameter of the method (validated by it).
Per-sample accounting is kept in ``self.records`` for the sweep. A sample that fails is
recorded with its reason and answered with ``ERROR_ANSWER`` (the sweep excludes it from
accuracy and counts it in ``errors``); it is never silently answered with "". A missing video
is such a sample, whether the task's ``doc_to_visual`` raises or calls ``sys.exit``.

Data parallel through lmms-eval's own mechanism (``accelerate launch -m lmms_eval ...`` or
``torchrun --nproc_per_node N -m lmms_eval ...``): the evaluator gives each rank its shard of
the documents; this class binds each rank to its own GPU (``cuda:LOCAL_RANK`` when
``device=auto``, as lmms-eval's own simple models do, e.g. ``lmms_eval/models/simple/llava_hf.py``),
joins the process group (``tokbench.harness.distributed``; lmms-eval's CLI has usually made it
already), and after its shard gathers every rank's per-sample
accounting (``all_gather_object``), so ``self.records`` holds every sample on every rank and
rank 0 alone writes ``accounting_path``, sorted by (task, doc_id) like a single-process run.
Each accounting line records the ``rank`` that answered it, the ``device`` it ran on and the
``world_size``. Padding requests (lmms-eval repeats a request on ranks with fewer documents; their
answers are discarded) are not run.
"""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.distributed as dist
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm

from tokbench.harness.distributed import join_process_group, rank_device
from tokbench.harness.models import OPTION_NAMES, load_adapter
from tokbench.harness.models.protocol import ModelAdapter
from tokbench.harness.runner import Runner, SampleRecord
from tokbench.methods.registry import build_reducer

ERROR_ANSWER = "[tokbench-error]"
DEFAULT_MAX_NEW_TOKENS = 1024


class TokbenchLMM(lmms):
    """A simple (non-chat) lmms-eval model: video + question in, greedy answer out."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        method: str = "full",
        max_frames_num: int = 32,
        device: str = "auto",
        dtype: str = "auto",
        attn_implementation: str = "sdpa",
        max_new_tokens: int | None = None,
        accounting_path: str | None = None,
        batch_size: int = 1,
        adapter: ModelAdapter | None = None,
        **method_params: Any,
    ) -> None:
        super().__init__()
        if int(batch_size) != 1:
            raise ValueError("tokbench generates one sample at a time (batch_size=1): per-sample timing needs it")
        model_options = {name: method_params.pop(name) for name in list(method_params) if name in OPTION_NAMES}
        self.reducer = build_reducer(method, method_params)
        self._rank, self._world_size = join_process_group()
        device = rank_device(device)
        self.adapter = adapter or load_adapter(pretrained, device=device, dtype=dtype, attn_implementation=attn_implementation, **model_options)
        self.runner = Runner(self.adapter, self.reducer, int(max_frames_num))
        self.max_new_tokens = None if max_new_tokens is None else int(max_new_tokens)
        self.accounting_path = accounting_path
        self.records: dict[tuple[str, Any], SampleRecord] = {}
        self.videos: dict[tuple[str, Any], tuple[str, str]] = {}
        self.answered_on: dict[tuple[str, Any], tuple[int, str]] = {}  # (rank, device) per sample

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers = []
        for request in tqdm(requests, desc=f"{self.reducer.name} samples", leave=False, disable=self.rank != 0):
            if (request.metadata or {}).get("__padding_only__"):
                answers.append(ERROR_ANSWER)  # lmms-eval discards a padding request's answer
                continue
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            record = self._answer_one(context, dict(gen_kwargs), doc_to_visual, doc_id, task, split)
            self.records[(task, doc_id)] = record
            self.answered_on[(task, doc_id)] = (self.rank, str(self.device))
            answers.append(ERROR_ANSWER if record.error else record.answer)
        self._gather()
        self._write_accounting()
        return answers

    def _gather(self) -> None:
        """Every rank ends with every rank's records, videos and where each ran (a collective)."""
        if self.world_size == 1:
            return
        shards: list[Any] = [None] * self.world_size
        dist.all_gather_object(shards, (self.records, self.videos, self.answered_on))
        for records, videos, answered_on in shards:
            self.records.update(records)
            self.videos.update(videos)
            self.answered_on.update(answered_on)

    def _answer_one(self, context, gen_kwargs, doc_to_visual, doc_id, task, split) -> SampleRecord:
        try:
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        except (Exception, SystemExit) as exc:  # tasks sys.exit() or raise on a missing video: one errored sample
            return SampleRecord(doc_id=doc_id, answer=None, error=f"video unavailable ({exc.__class__.__name__}): {exc}")
        videos = [v for v in visuals if isinstance(v, str)]
        if len(videos) != 1 or len(visuals) != 1:
            return SampleRecord(doc_id=doc_id, answer=None, error=f"ValueError: expected one video path, got {len(visuals)} visual(s)")
        self.videos[(task, doc_id)] = (videos[0], context)
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(gen_kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        if self.max_new_tokens is not None:
            max_new = min(max_new, self.max_new_tokens)
        return self.runner.answer(doc_id, videos[0], context, max_new, until)

    def _write_accounting(self) -> None:
        if not self.accounting_path or self.rank != 0:
            return
        with open(self.accounting_path, "w") as handle:
            for key, record in sorted(self.records.items(), key=lambda item: item[0]):
                rank, device = self.answered_on[key]
                line = {"task": key[0], **record.to_json(), "rank": rank, "world_size": self.world_size, "device": device}
                handle.write(json.dumps(line, default=str) + "\n")

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("tokbench answers generate_until tasks only (video QA); loglikelihood tasks are not supported")

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("tokbench does not support multi-round generation tasks")
