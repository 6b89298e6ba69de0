"""gpuhub: JupyterHub with dedicated GPUs per user, on one Docker host."""

from .spawner import GPUDockerSpawner

__all__ = ["GPUDockerSpawner"]
