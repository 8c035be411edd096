"""What every Hugging Face vision-language adapter shares, written once.

``HuggingFaceAdapter`` loads a checkpoint with its processor (a clear error when it cannot),
and provides the parts of ``ModelAdapter`` (``protocol.py``) that do not depend on the family:
stop ids, decoding, the decoder stack for the engine, the text dimensions for the paper FLOPs,
the description a row records, and the splice of reduced visual tokens into the prompt
embeddings at the family's one video placeholder token. A family adapter subclasses it and adds
its frames, prompt, vision path and position ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tokbench.harness.models.protocol import DecoderStack, resolve_device, resolve_dtype
from tokbench.methods.seam import MethodError, ReducedTokens


class HuggingFaceAdapter:
    """A loaded Hugging Face checkpoint: model, processor, tokenizer, device and dtype."""

    geometry_name: str = ""

    def __init__(self, model_class: type, pretrained: str, device: str, dtype: str, attn_implementation: str):
        from transformers import AutoProcessor

        self.pretrained = str(pretrained)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        try:
            self.model = model_class.from_pretrained(self.pretrained, dtype=self.dtype, attn_implementation=attn_implementation)
            self.model = self.model.to(self.device).eval()
            self.processor = AutoProcessor.from_pretrained(self.pretrained)
        except OSError as exc:
            raise ValueError(f"cannot load model {self.pretrained!r}: {exc}") from None
        self.tokenizer = self.processor.tokenizer
        self.config = self.model.config
        local = Path(self.pretrained).is_dir()
        self.checkpoint_dir = self.pretrained if local else getattr(self.config, "_name_or_path", None)

    def stop_token_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        eos = self.model.generation_config.eos_token_id
        ids.update(eos if isinstance(eos, list) else [eos])
        return {i for i in ids if i is not None}

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def decoder(self) -> DecoderStack:
        lm = self.model.model.language_model
        return DecoderStack(
            embed_tokens=lm.embed_tokens,
            layers=lm.layers,
            rotary=lm.rotary_emb,
            norm=lm.norm,
            lm_head=self.model.lm_head,
            attn_implementation=self.config.text_config._attn_implementation,
        )

    def text_dims(self) -> dict[str, int]:
        text = self.config.text_config
        return {"layers": text.num_hidden_layers, "hidden": text.hidden_size, "ffn": text.intermediate_size}

    def describe(self) -> dict[str, Any]:
        return {"model": self.pretrained, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""), "geometry": self.geometry_name}

    def splice(self, prompt: str, reduced: ReducedTokens, placeholder_id: int, placeholder: str) -> tuple[torch.Tensor, int, torch.Tensor]:
        """Token ids of ``prompt``, where its one ``placeholder`` token sits, and the prompt
        embeddings [1, S, D] with the reduced visual tokens in its place."""
        ids = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        where = (ids == placeholder_id).nonzero().flatten()
        if len(where) != 1:
            raise MethodError(f"the prompt must hold exactly one {placeholder} token, found {len(where)}")
        start = int(where[0])
        embed = self.model.get_input_embeddings()
        prefix = embed(ids[:start].to(self.device))
        suffix = embed(ids[start + 1 :].to(self.device))
        visual = reduced.embeddings.to(self.device, prefix.dtype)
        return ids, start, torch.cat([prefix, visual, suffix], dim=0)[None]
