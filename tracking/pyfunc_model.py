"""The Python code inside every registered mrlfads model (MLflow "models from code").

Why a file of its own: MLflow copies this file into the model and runs it on
``mlflow.pyfunc.load_model``; nothing is pickled. It needs only torch, numpy, MLflow and the
``mrlfads`` package, which travels with the model (``code_paths``), so a registered model
loads in an environment that has never seen this repository. tracking/registry.py logs it;
nothing in mrlfads imports it.

``load_context`` rebuilds the network from the model's ``checkpoint`` artifact (state dict,
run config and dataset manifest; read with ``weights_only=True``). ``predict`` takes one
float32 array per region, the region's held-in spike counts (or values) ``(trials, bins,
n_heldin)``, keyed by region name, plus ``ext/<region>`` for regions with external inputs,
and returns the posterior means as ``mrlfads infer`` names its output columns:
``rates/<region>`` and ``heldout_rates/<region>`` (trials, bins - ic_enc_seq_len, neurons),
``factors/<region>``, ``inputs/<region>`` and ``messages/<src>-><dst>``.
"""
from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


class MRLFADSRates(PythonModel):
    """Per-region spike counts in, posterior-mean rates (and the rest) out."""

    # MLflow wraps a subclass's predict to validate input against its type hints, and warns
    # when there are none; its hints cannot express a dict of arrays, and the model's
    # signature checks the input, so the wrapper is skipped (the attribute MLflow's own
    # ChatModel sets; tests/test_registry_portable.py checks that no warning is printed)
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        import torch

        from mrlfads.config import ModelConfig
        from mrlfads.config_utils import from_dict
        from mrlfads.model import MRLFADS

        payload = torch.load(context.artifacts["checkpoint"], map_location="cpu",
                             weights_only=True)
        cfg = from_dict(ModelConfig, payload["run_config"]["model"], where="checkpoint.model")
        self.model = MRLFADS(cfg)
        self.model.load_state_dict(payload["model"])
        self.model.eval()

    def predict(self, context, model_input, params=None):
        import numpy as np

        from mrlfads.inference import posterior_means

        cfg = self.model.cfg
        if not isinstance(model_input, dict):
            raise TypeError("input: a dict of float32 arrays (trials, bins, held-in neurons), "
                            f"one per region {list(cfg.region_names)}")
        missing = [r for r in cfg.region_names if r not in model_input]
        if missing:
            raise KeyError(f"input has no array for region(s) {missing}; the model's regions "
                           f"are {list(cfg.region_names)}")
        heldin = [np.asarray(model_input[r], dtype=np.float32) for r in cfg.region_names]
        ext = [model_input.get(f"ext/{r}") for r in cfg.region_names]
        ext = None if all(e is None for e in ext) else [
            None if e is None else np.asarray(e, dtype=np.float32) for e in ext]
        return posterior_means(self.model, heldin, ext)


mlflow.models.set_model(MRLFADSRates())
