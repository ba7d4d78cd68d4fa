"""Chat generation with a local Hugging Face causal LM (a zoo name, an HF folder or an lref adapter folder), and the
teacher over it. :class:`ChatModel` is also what ``lref serve llm`` serves.

Messages become a prompt through the tokenizer's chat template when it has one, else a plain concatenation
(``System: ...`` / ``User: ...`` / ``Assistant:``), which suits base models such as Gemma-3-270M.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lref.teachers.base import ChatTeacher


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    """stop (end of sequence or a stop string) or length (max_new_tokens reached)."""


class ChatModel:
    """Greedy (temperature 0) or sampled chat generation; one generation at a time (a lock), since the model is
    shared across server threads."""

    def __init__(self, model, tokenizer, name: str = "local"):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self._lock = threading.Lock()

    @classmethod
    def load(cls, name_or_path: str, name: str | None = None, threads: int | None = None) -> "ChatModel":
        import torch

        from lref.models.loading import load_causal_lm

        if threads:
            torch.set_num_threads(threads)
        model, tokenizer, _ = load_causal_lm(name_or_path, device="auto")
        return cls(model, tokenizer, name or str(name_or_path))

    def render(self, messages: Sequence[dict[str, str]]) -> tuple[str, bool]:
        """(prompt text, whether it came from a chat template, which then carries its own special tokens)."""
        if getattr(self.tokenizer, "chat_template", None):
            try:
                text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
                return text, True
            except Exception:  # templates that reject a role (e.g. no system turn): fall back to plain text
                pass
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n\n".join(lines) + "\n\nAssistant:", False

    def generate(self, messages: Sequence[dict[str, str]], max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None, stop: Sequence[str] = ()) -> Generation:
        import torch

        text, templated = self.render(messages)
        encoded = self.tokenizer(text, return_tensors="pt", add_special_tokens=not templated).to(self.model.device)
        prompt_tokens = int(encoded["input_ids"].shape[1])
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with self._lock, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            output = self.model.generate(**encoded, max_new_tokens=max_new_tokens, pad_token_id=pad, **sampling)
        new_ids = output[0, prompt_tokens:].tolist()
        eos = self.tokenizer.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        finish = "length"
        for position, token in enumerate(new_ids):
            if token in eos_ids:
                new_ids, finish = new_ids[:position], "stop"
                break
        completion = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        for marker in stop:
            if marker and marker in completion:
                completion, finish = completion[: completion.index(marker)], "stop"
        return Generation(completion, prompt_tokens, len(new_ids), finish)


@dataclass
class LocalTeacherConfig:
    model: str = field(default="gemma-3-270m", metadata={
        "help": "Teacher LLM: a zoo name, an HF folder or an lref adapter folder."})
    max_new_tokens: int = field(default=256, metadata={"help": "Most tokens the teacher writes per answer."})
    malformed_retries: int = field(default=1, metadata={
        "help": "Sampled re-generations for an answer without a parsable label before it is dropped."})
    retry_temperature: float = field(default=0.7, metadata={"help": "Temperature of those re-generations."})
    hint_label: bool = field(default=True, metadata={"help": "Tell the teacher the human label (EE/RA)."})
    threads: int | None = field(default=None, metadata={"help": "CPU threads for torch; default: torch's choice."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})


class LocalChatBackend:
    def __init__(self, chat_model: ChatModel, config: LocalTeacherConfig):
        self.chat_model, self.config = chat_model, config
        self.name = f"local:{chat_model.name}"
        self._stats = {"pairs": 0, "generated_tokens": 0, "seconds": 0.0}

    def stats(self) -> dict[str, Any]:
        stats = dict(self._stats)
        stats["pairs_per_s"] = round(stats["pairs"] / stats["seconds"], 3) if stats["seconds"] else None
        return stats

    def complete(self, conversations: Sequence[list[dict[str, str]]], attempt: int = 0) -> list[str | None]:
        from tqdm.auto import tqdm

        started = time.perf_counter()
        out = []
        for messages in tqdm(conversations, desc=f"teacher {self.chat_model.name}", unit="pair",
                             disable=not self.config.progress or len(conversations) < 2):
            generation = self.chat_model.generate(
                messages, self.config.max_new_tokens,
                temperature=0.0 if attempt == 0 else self.config.retry_temperature,
                seed=attempt if attempt else None,
            )
            self._stats["generated_tokens"] += generation.completion_tokens
            out.append(generation.text)
        self._stats["pairs"] += len(conversations) if attempt == 0 else 0
        self._stats["seconds"] += time.perf_counter() - started
        return out


class LocalTeacher(ChatTeacher):
    """The EE/RA/DR/confusable teacher over a local HF causal LM (greedy generation)."""

    def __init__(self, config: LocalTeacherConfig, chat_model: ChatModel | None = None):
        self.config = config
        chat_model = chat_model or ChatModel.load(config.model, threads=config.threads)
        super().__init__(LocalChatBackend(chat_model, config), config.malformed_retries, config.hint_label)
