"""The teacher-student task and what theory says about it: data, the optimal λ, the exact expected test loss.

Model and loss as decaylab defines them: a linear student w ∈ R^d (no bias), training loss ½·mean (y − w·x)² over
m examples plus decaylab's l2 penalty ½λ‖w‖². Its minimizer is w = (XᵀX/m + λI)⁻¹ Xᵀy/m, ridge with α = mλ in
the summed form. Inputs x ~ N(0, I_d), labels y = w*·x + ε, ε ~ N(0, σ²).

The optimal λ. For isotropic Gaussian inputs the expected test loss of ridge depends on the teacher only through
‖w*‖² (E over X of (XᵀX + αI)⁻² is a multiple of I by rotational invariance), and it is linear in ‖w*‖². So it
equals the average over teachers w* ~ N(0, ‖w*‖²/d · I), for which the posterior mean, α = σ²d/‖w*‖², is the best
estimator of all. Hence, exactly and for every m (not only asymptotically): λ* = σ²·d / (m·‖w*‖²).
`expected_test_loss` checks it by Monte Carlo.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Task:
    """One teacher and one training set drawn from it."""

    x: np.ndarray  # [n, d]
    y: np.ndarray  # [n]
    teacher: np.ndarray  # [d]
    sigma2: float

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])


def make_task(dim: int, examples: int, sigma2: float, teacher_norm2: float, seed: int) -> Task:
    """A teacher of squared norm `teacher_norm2` in a random direction and `examples` noisy examples of it."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(dim)
    teacher = direction * np.sqrt(teacher_norm2) / np.linalg.norm(direction)
    x = rng.standard_normal((examples, dim))
    y = x @ teacher + rng.standard_normal(examples) * np.sqrt(sigma2)
    return Task(x, y, teacher, sigma2)


def optimal_lambda(dim: int, examples: int, sigma2: float, teacher_norm2: float) -> float:
    """λ* = σ²·d/(m·‖w*‖²) for decaylab's l2 on a mean loss over m training examples (module docstring)."""
    return sigma2 * dim / (examples * teacher_norm2)


def ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """The exact minimizer of ½·mean (y − Xw)² + ½λ‖w‖²."""
    m, d = x.shape
    return np.linalg.solve(x.T @ x / m + lam * np.eye(d), x.T @ y / m)


def population_loss(w: np.ndarray, task: Task) -> float:
    """Expected ½(y − w·x)² on a fresh example: ½(‖w − w*‖² + σ²) for x ~ N(0, I)."""
    return 0.5 * (float(np.sum((w - task.teacher) ** 2)) + task.sigma2)


def expected_test_loss(lambdas: np.ndarray, dim: int, examples: int, sigma2: float, teacher: np.ndarray,
                       draws: int = 2000, seed: int = 0) -> np.ndarray:
    """Monte Carlo over training sets of size `examples` from this fixed teacher: E ½(‖ŵ_λ − w*‖² + σ²) per λ."""
    rng = np.random.default_rng(seed)
    lams = np.asarray(lambdas, dtype=float)
    total = np.zeros(len(lams))
    for _ in range(draws):
        x = rng.standard_normal((examples, dim))
        y = x @ teacher + rng.standard_normal(examples) * np.sqrt(sigma2)
        s, v = np.linalg.eigh(x.T @ x / examples)
        b = v.T @ (x.T @ y / examples)  # ŵ_λ = V diag(1/(s+λ)) b
        t = v.T @ teacher
        total += np.sum((b[None, :] / (s[None, :] + lams[:, None]) - t[None, :]) ** 2, axis=1)
    return 0.5 * (total / draws + sigma2)
