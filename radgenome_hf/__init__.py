"""radgenome_hf: RadGenome-Chest CT and related chest-CT vision-language data for Hugging Face datasets and PyTorch."""

__version__ = "0.1.0"
