"""k-means in JAX (k-means++ seeding, Lloyd iterations) for HuBERT's cluster targets."""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class KMeansModel:
    """Centroids in a standardised feature space; `assign` maps raw features to cluster ids."""

    centroids: np.ndarray  # [k, D], standardised space
    mean: np.ndarray  # [D]
    std: np.ndarray  # [D]

    def assign(self, features: jax.Array) -> jax.Array:
        """Nearest-centroid ids of raw features [..., D] (jnp, jit-friendly)."""
        z = (features - self.mean) / self.std
        return jnp.argmin(_sq_distances(z, jnp.asarray(self.centroids)), axis=-1)

    def save(self, path: str) -> None:
        """Write as .npz (written to a temporary name, then renamed)."""
        tmp = f"{path}.tmp.npz"
        np.savez(tmp, centroids=self.centroids, mean=self.mean, std=self.std)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "KMeansModel":
        """Read a model written by `save`."""
        with np.load(path) as f:
            return cls(f["centroids"], f["mean"], f["std"])


def _sq_distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
    return (jnp.sum(x * x, -1, keepdims=True) - 2.0 * x @ centroids.T + jnp.sum(centroids * centroids, -1))


@jax.jit
def _lloyd_step(x, centroids):
    assignment = jnp.argmin(_sq_distances(x, centroids), axis=-1)
    k = centroids.shape[0]
    sums = jax.ops.segment_sum(x, assignment, num_segments=k)
    counts = jax.ops.segment_sum(jnp.ones(x.shape[0]), assignment, num_segments=k)
    # An emptied cluster keeps its centroid rather than collapsing to the origin.
    new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centroids)
    inertia = jnp.sum(jnp.min(_sq_distances(x, new), axis=-1))
    return new, inertia


def _plus_plus_init(key, x, k):
    first = jax.random.randint(key, (), 0, x.shape[0])
    centroids = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])
    closest = jnp.sum((x - x[first]) ** 2, -1)

    def body(i, carry):
        centroids, closest, key = carry
        key, sub = jax.random.split(key)
        pick = jax.random.categorical(sub, jnp.log(jnp.maximum(closest, 1e-30)))
        centroids = centroids.at[i].set(x[pick])
        closest = jnp.minimum(closest, jnp.sum((x - x[pick]) ** 2, -1))
        return centroids, closest, key

    centroids, _, _ = jax.lax.fori_loop(1, k, body, (centroids, closest, key))
    return centroids


def fit_kmeans(features: np.ndarray, k: int, *, iterations: int = 50, seed: int = 0, tol: float = 1e-5) -> KMeansModel:
    """Fit k-means to [N, D] features (standardised per dimension first); stops when inertia stalls."""
    features = np.asarray(features, np.float32)
    if features.ndim != 2 or features.shape[0] < k:
        raise ValueError(f"fit_kmeans needs [N, D] features with N >= k={k}, got shape {features.shape}")
    mean, std = features.mean(0), features.std(0) + 1e-6
    x = jnp.asarray((features - mean) / std)
    centroids = jax.jit(_plus_plus_init, static_argnums=2)(jax.random.key(seed), x, k)
    previous = np.inf
    for _ in range(iterations):
        centroids, inertia = _lloyd_step(x, centroids)
        inertia = float(inertia)
        if np.isfinite(previous) and previous - inertia <= tol * previous:
            break
        previous = inertia
    return KMeansModel(np.asarray(centroids), mean, std)
