"""How close a toy decomposition is to the paper's known answer (S18.3): the identity-CI error
of a site's CI on single-feature inputs, the dense-CI error of a site expected to keep k
always-needed components, and the mean max cosine similarity between alive components and the
true feature directions. Numpy only, on the arrays `evaluate_decomposition` returns."""

from __future__ import annotations

import numpy as np
from jaxtyping import Bool, Float
from scipy.optimize import linear_sum_assignment

from param_decomp.targets.resid_mlp import ResidMLP
from param_decomp.targets.tms import TMS

TOLERANCE = 0.1  # an entry is "on" above 1 - tol and "off" below tol


def permute_to_identity_optimal(ci: Float[np.ndarray, "f C"]) -> Float[np.ndarray, "f C"]:
    """Columns reordered so the diagonal's sum is the largest any assignment gives (Hungarian);
    the greedy `eval/figures.permute_to_identity` can miss it when two features share a
    component, and the error below must not depend on the feature order."""
    arr = np.asarray(ci, np.float64)
    n = min(arr.shape)
    rows, cols = linear_sum_assignment(-arr[:n])
    chosen = cols[np.argsort(rows)]
    rest = np.setdiff1d(np.arange(arr.shape[1]), chosen)
    return arr[:, np.concatenate([chosen, rest])]


def identity_ci_error(ci: Float[np.ndarray, "f C"], tol: float = TOLERANCE) -> int:
    """Entries off the permuted identity: off-diagonal entries above tol plus diagonal entries
    below 1 - tol. 0 iff each feature has its own component, on (> 1 - tol) for it alone."""
    permuted = permute_to_identity_optimal(ci)
    n = min(permuted.shape)
    diag = np.diag(permuted[:n, :n])
    off = permuted.copy()
    off[np.arange(n), np.arange(n)] = 0.0
    return int(np.sum(off > tol) + np.sum(diag < 1.0 - tol))


def dense_ci_error(ci: Float[np.ndarray, "f C"], k: int, tol: float = TOLERANCE) -> int:
    """Distance from "k components carry every input" (the paper's answer for the identity of
    TMS-id and ResidMLP's mlp_out): columns sorted by total CI; each of the first k without an
    entry ≥ 1 - tol counts 1, every entry above tol in the other columns counts 1."""
    arr = np.asarray(ci, np.float64)
    order = np.argsort(-arr.sum(axis=0), kind="stable")
    arr = arr[:, order]
    missing = np.sum(~np.any(arr[:, :k] >= 1.0 - tol, axis=0))
    return int(missing + np.sum(arr[:, k:] > tol))


def mean_max_cosine(
    components: Float[np.ndarray, "C d"],
    alive: Bool[np.ndarray, " C"],
    features: Float[np.ndarray, "f d"],
) -> float:
    """Mean over features of the largest |cos| between the feature's direction and an alive
    component's direction (its V column or U row, in the space the feature directions live);
    NaN without alive components. Dead components are left out: a random direction among many
    can match a feature by chance and says nothing about the decomposition."""
    comps = np.asarray(components, np.float64)[np.asarray(alive, bool)]
    if comps.shape[0] == 0:
        return float("nan")
    feats = np.asarray(features, np.float64)
    unit = lambda a: a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)  # noqa: E731
    cos = np.abs(unit(feats) @ unit(comps).T)
    return float(np.mean(np.max(cos, axis=1)))


def feature_directions(target: TMS, site: str) -> tuple[str, Float[np.ndarray, "f d"]] | None:
    """(side, directions): where a TMS site's true features live. "in": compare with the
    components' V columns (the site's input space). linear1's input features are the unit
    vectors, every later site's input carries feature f along W1[f] (through identity hidden
    layers; a trained hidden layer has no known answer: None)."""
    W1 = np.asarray(target.W1[...])
    if site == "linear1":
        return "in", np.eye(target.n_features)
    hidden = [np.asarray(h[...]) for h in target.hidden]
    if any(not np.allclose(h, np.eye(h.shape[0])) for h in hidden):
        return None
    return "in", W1


def resid_mlp_feature_coordinates(
    target: ResidMLP, site: str, V: Float[np.ndarray, "d_in C"], U: Float[np.ndarray, "C d_out"]
) -> Float[np.ndarray, "C f"] | None:
    """ResidMLP components in feature coordinates: what mlp_in's component c reads of each
    feature, W_E[f] . V[:, c], and what mlp_out's writes along each, U[c, :] . W_E[f]. The
    residual stream only ever holds span(W_E) (n_features of d_embed dimensions), so V's part
    outside it is never exercised and unconstrained by training; a cosine in the full d_embed
    space would score it (on ResidMLP-1, the median component has 62 % of |V|^2 outside it)."""
    W_E = np.asarray(target.W_E[...], np.float64)
    if site.endswith("mlp_in"):
        return (W_E @ np.asarray(V, np.float64)).T
    if site.endswith("mlp_out"):
        return np.asarray(U, np.float64) @ W_E.T
    return None


def site_mmcs(
    target: TMS | ResidMLP,
    site: str,
    V: Float[np.ndarray, "d_in C"],
    U: Float[np.ndarray, "C d_out"],
    alive: Bool[np.ndarray, " C"],
) -> float | None:
    """`mean_max_cosine` of one site against its true features; None where unknown. TMS: in the
    site's own space (`feature_directions`); ResidMLP: in feature coordinates, against the unit
    vectors (`resid_mlp_feature_coordinates`)."""
    if isinstance(target, ResidMLP):
        comps = resid_mlp_feature_coordinates(target, site, V, U)
        if comps is None:
            return None
        return mean_max_cosine(comps, alive, np.eye(comps.shape[1]))
    if not isinstance(target, TMS):
        return None
    known = feature_directions(target, site)
    if known is None:
        return None
    side, features = known
    components = np.asarray(V).T if side == "in" else np.asarray(U)
    return mean_max_cosine(components, alive, features)
