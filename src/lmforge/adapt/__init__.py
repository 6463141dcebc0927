"""Adapting a trained model to a task: adapters saved apart from their base (`adapter`),
LoRA (`lora`, `lora_format`), classification heads and probes, fine-tuning."""
