"""Task readers (E2E, GLUE, instruction data, JSON Lines) and tokenization into loss-masked examples."""

from lorakit.core.lazy import lazy_names

__getattr__, __dir__ = lazy_names(__name__, {
    "lorakit.data.e2e": ["E2E_PROMPT_TEMPLATE", "e2e_prompt", "group_references", "read_e2e"],
    "lorakit.data.errors": ["DataError"],
    "lorakit.data.glue": ["GLUE_TASKS", "GlueTask", "glue_task", "read_glue"],
    "lorakit.data.instruct": ["instruct_prompt", "read_instruct"],
    "lorakit.data.jsonl": ["read_jsonl"],
    "lorakit.data.records": ["LabeledText", "TextPair", "require_completions"],
    "lorakit.data.tokenize": ["IGNORE_INDEX", "Example", "collate", "model_inputs", "tokenize_labeled",
                              "tokenize_pairs"],
})

__all__ = [
    "DataError", "E2E_PROMPT_TEMPLATE", "Example", "GLUE_TASKS", "GlueTask", "IGNORE_INDEX", "LabeledText",
    "TextPair", "collate", "e2e_prompt", "glue_task", "group_references", "instruct_prompt", "model_inputs",
    "read_e2e", "read_glue", "read_instruct", "read_jsonl", "require_completions", "tokenize_labeled",
    "tokenize_pairs",
]
