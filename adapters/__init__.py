"""The model side: the only package that imports torch, transformers, peft and bitsandbytes."""
