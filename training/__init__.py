"""Offline jobs: QLoRA adapter training, identity data and probe, router refits (imports adapters and data)."""
