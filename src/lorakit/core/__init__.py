"""lorakit.core: LoRA layers, injection, merging and adapter files. Knows nothing of training or serving."""
