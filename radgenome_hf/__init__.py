"""radgenome_hf: RadGenome-Chest CT and related chest-CT vision-language data for Hugging Face datasets and PyTorch.

``import radgenome_hf`` registers the ``radgenome`` builder with datasets, so that
``datasets.load_dataset("radgenome", "vqa", data_dir=…)`` works; ``radgenome_hf.load_dataset("vqa", …)`` is the
stable entry point with the same arguments.
"""

__version__ = "0.1.0"

from .hf.loading import lazy, load_dataset, load_dataset_builder, load_packed, register  # noqa: E402

register()

__all__ = ["__version__", "lazy", "load_dataset", "load_dataset_builder", "load_packed", "register"]
