"""Task readers (E2E, GLUE, instruction data, JSON Lines) and tokenization into loss-masked examples."""

from lorakit.data.e2e import E2E_PROMPT_TEMPLATE, e2e_prompt, group_references, read_e2e
from lorakit.data.errors import DataError
from lorakit.data.glue import GLUE_TASKS, GlueTask, glue_task, read_glue
from lorakit.data.instruct import instruct_prompt, read_instruct
from lorakit.data.jsonl import read_jsonl
from lorakit.data.records import LabeledText, TextPair, require_completions
from lorakit.data.tokenize import (
    IGNORE_INDEX,
    Example,
    collate,
    model_inputs,
    tokenize_labeled,
    tokenize_pairs,
)

__all__ = [
    "DataError",
    "E2E_PROMPT_TEMPLATE",
    "Example",
    "GLUE_TASKS",
    "GlueTask",
    "IGNORE_INDEX",
    "LabeledText",
    "TextPair",
    "collate",
    "model_inputs",
    "e2e_prompt",
    "glue_task",
    "group_references",
    "instruct_prompt",
    "read_e2e",
    "read_glue",
    "read_instruct",
    "read_jsonl",
    "require_completions",
    "tokenize_labeled",
    "tokenize_pairs",
]
