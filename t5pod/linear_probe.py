"""The linear model of a probe: fitted on frozen features, its strength cross-validated, scored once.

scikit-learn and numpy only, so a machine without TensorFlow (scripts/study_gpu_run.py) fits probes
exactly as `python -m t5pod probe` does.
"""

import warnings

import numpy as np
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

REGULARISATION_GRID = tuple(10.0**k for k in range(-4, 5))  # C for logistic, alpha for ridge


def fit_and_score(
    kind: str, train_x: np.ndarray, train_y: np.ndarray, eval_x: np.ndarray, eval_y: np.ndarray, folds: int = 5
) -> tuple[float, float]:
    """(score x 100 on the evaluation set, chosen regularisation) of a linear model fitted on the
    standardised training features, its strength chosen by cross-validation on them alone."""
    if kind == "classification":
        linear = LogisticRegressionCV(Cs=list(REGULARISATION_GRID), cv=folds, max_iter=2000, scoring="accuracy")
        with warnings.catch_warnings():  # scikit-learn's notice of a future change to its fitted attributes
            warnings.simplefilter("ignore", FutureWarning)
            model = make_pipeline(StandardScaler(), linear).fit(train_x, train_y.astype(int))
        return 100.0 * float(np.mean(model.predict(eval_x) == eval_y.astype(int))), float(linear.C_[0])
    linear = RidgeCV(alphas=list(REGULARISATION_GRID), cv=KFold(folds, shuffle=True, random_state=0))
    model = make_pipeline(StandardScaler(), linear).fit(train_x, train_y)
    predictions = model.predict(eval_x)
    if np.allclose(predictions, predictions[0], rtol=0, atol=1e-9):
        return 0.0, float(linear.alpha_)  # a constant prediction has no correlation: no skill
    return 100.0 * float(np.corrcoef(predictions, eval_y)[0, 1]), float(linear.alpha_)
