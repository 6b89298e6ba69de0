"""gpuhub: JupyterHub with dedicated GPUs per user, on one Docker host.

The pure modules (inventory, allocator, profiles, quota, container, settings)
import without JupyterHub or Docker; `GPUDockerSpawner` is loaded on first use.
"""

__all__ = ["GPUDockerSpawner"]


def __getattr__(name):
    if name == "GPUDockerSpawner":
        from .spawner import GPUDockerSpawner

        return GPUDockerSpawner
    raise AttributeError(name)
