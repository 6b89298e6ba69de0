"""gpuhub: JupyterHub with dedicated GPUs per user, on one Docker host or a Docker Swarm.

The pure modules (inventory, allocator, profiles, quota, container, settings)
import without JupyterHub or Docker; `GPUDockerSpawner` is loaded on first use.
"""

__all__ = ["GPUDockerSpawner", "GPUSwarmSpawner"]


def __getattr__(name):
    if name == "GPUDockerSpawner":
        from .spawner import GPUDockerSpawner

        return GPUDockerSpawner
    if name == "GPUSwarmSpawner":
        from .swarm_spawner import GPUSwarmSpawner

        return GPUSwarmSpawner
    raise AttributeError(name)
