"""Using what a run trained: loading it (any method, from a run directory or an adapter), evaluating it on a
task's split, merging it into a plain model. The work behind `lorakit eval`, `generate` and `merge`."""

from lorakit.core.lazy import lazy_names

__getattr__, __dir__ = lazy_names(__name__, {
    "lorakit.trained.evaluate": ["evaluate", "format_table"],
    "lorakit.trained.load": ["Target", "load_trained", "load_weights", "resolve"],
    "lorakit.trained.plain_model": ["check_output_directory", "merge_to_directory"],
})

__all__ = ["Target", "check_output_directory", "evaluate", "format_table", "load_trained", "load_weights",
           "merge_to_directory", "resolve"]
