"""The sweep's objective: fit the linear student to convergence with decaylab's l2 penalty, score the held-out fold."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import decaylab
from experiments.ground_truth.task import make_task, population_loss, ridge


def half_mse(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """½·mean squared error, the task loss (a Gaussian negative log-likelihood up to a constant)."""
    return 0.5 * ((model(x).squeeze(-1) - y) ** 2).mean()


def fit(trial: decaylab.Trial) -> nn.Module:
    """Train on all but the held-out fold (full batch L-BFGS in float64), report the fold's ½MSE; the final model
    reports its exact test loss. Extra fields check convergence against the closed-form minimizer."""
    p = trial.params
    task = make_task(p["dim"], p["examples"], p["sigma2"], p["teacher_norm2"], p["data_seed"])
    train_idx = trial.train_indices or list(range(p["examples"]))
    x = torch.tensor(task.x[train_idx])
    y = torch.tensor(task.y[train_idx])
    model = nn.Linear(task.dim, 1, bias=False).double()
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=500, tolerance_grad=1e-12,
                                  tolerance_change=1e-15, history_size=50, line_search_fn="strong_wolfe")
    trial.watch(model, optimizer)
    penalty = trial.regularization.penalty  # ½λ‖w‖² under mode l2, zero at λ = 0

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = half_mse(model, x, y) + penalty(model)
        loss.backward()
        return loss

    train_loss = float(optimizer.step(closure).detach())
    closure()
    grad_norm = float(model.weight.grad.norm())
    w = model.weight.detach().numpy().ravel()
    exact = ridge(task.x[train_idx], task.y[train_idx], trial.weight_decay)  # λ, 0 for the baseline
    held = trial.valid_indices
    with torch.no_grad():
        if held is not None:
            val = float(half_mse(model, torch.tensor(task.x[held]), torch.tensor(task.y[held])))
        else:  # the final model has no held-out fold: its exact expected loss on fresh examples
            val = population_loss(w, task)
    trial.report(step=int(optimizer.state[optimizer._params[0]]["n_iter"]), val_loss=val, train_loss=train_loss,
                 epoch=1, grad_norm=grad_norm, closed_form_distance=float(np.linalg.norm(w - exact)))
    if trial.final:
        trial.report_test(loss=population_loss(w, task))
    return model
