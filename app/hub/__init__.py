"""Hugging Face search and downloads (huggingface-hub); no Qt."""
