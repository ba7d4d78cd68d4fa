"""Prompt templates and label verbalisation: the direct prompt (`direct`), the Multi-CoT prompts (`cot`) and the
business rule sets RA puts in its prompt (`rules`).

Layout: everything that does not depend on the pair comes first (the *prefix*: instruction and label definitions), so
its KV cache can be computed once and shared; the *pair* part follows and ends right before the answer. The prefix and
the pair are tokenized separately and concatenated, at training and at scoring time alike, so that the shared prefix
has the same token ids in every sequence.
"""

from lref.data.hints import (
                                 MATCH_HINT,
                                 match_hint,
                                 match_hint_manifest,
                                 records_for_model,
                                 with_match_hints,
)
from lref.prompts.direct import (
                                 ANSWER_CUE,
                                 PAIR_TAIL_TOKENS,
                                 PROMPT_VERSION,
                                 Prompt,
                                 VerbalizationError,
                                 direct_prompt,
                                 encode_prompt,
                                 instruction,
                                 label_completion,
                                 label_token_ids,
                                 product_fields,
                                 truncate_pair,
)

__all__ = [
    "ANSWER_CUE", "MATCH_HINT", "PAIR_TAIL_TOKENS", "PROMPT_VERSION", "Prompt", "VerbalizationError", "direct_prompt",
    "encode_prompt", "instruction", "label_completion", "label_token_ids", "match_hint", "match_hint_manifest",
    "product_fields", "records_for_model", "truncate_pair", "with_match_hints",
]
