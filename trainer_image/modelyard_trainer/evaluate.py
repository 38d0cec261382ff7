"""Metrics on held-out data (numpy), for PyTorch and ONNX Runtime outputs alike."""

from __future__ import annotations

import numpy as np

from .contracts import EvaluationMetrics


def classification_metrics(
    probabilities: np.ndarray, labels: np.ndarray, classes: int
) -> EvaluationMetrics:
    """Cross-entropy, accuracy, macro F1 (over the classes that occur) and the confusion matrix."""
    labels = labels.astype(np.int64)
    predicted = probabilities.argmax(axis=1)
    chosen = probabilities[np.arange(len(labels)), labels].astype(np.float64)
    loss = float(-np.log(np.clip(chosen, 1e-12, 1.0)).mean())
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    true_positive = np.diag(confusion).astype(np.float64)
    actual = confusion.sum(axis=1).astype(np.float64)
    guessed = confusion.sum(axis=0).astype(np.float64)
    occurring = (actual + guessed) > 0
    denominator = actual + guessed
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros(classes), where=denominator > 0)
    return EvaluationMetrics(
        rows=len(labels),
        test_loss=loss,
        test_accuracy=float((predicted == labels).mean()),
        f1_macro=float(f1[occurring].mean()) if occurring.any() else 0.0,
        confusion_matrix=confusion.tolist(),
    )


def regression_metrics(
    predictions: np.ndarray, targets: np.ndarray, target_scale: float
) -> EvaluationMetrics:
    """RMSE, MAE and R² in the target's units; the loss is the MSE of the standardized target."""
    predictions = predictions.astype(np.float64).reshape(-1)
    targets = targets.astype(np.float64).reshape(-1)
    error = predictions - targets
    mse = float((error**2).mean())
    variance = float(((targets - targets.mean()) ** 2).sum())
    return EvaluationMetrics(
        rows=len(targets),
        test_loss=mse / target_scale**2,
        rmse=mse**0.5,
        mae=float(np.abs(error).mean()),
        r2=1.0 - float((error**2).sum()) / variance if variance > 0 else 0.0,
    )
