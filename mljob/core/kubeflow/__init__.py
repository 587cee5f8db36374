"""Kubeflow training-operator's ``kubeflow.org/v1`` kinds, served by mljob as a drop-in: pure pieces only.

* :mod:`.api`: the v1 API as pydantic models (TFJob, PyTorchJob, MXJob, XGBoostJob, JAXJob, PaddleJob), field for
  field as Kubeflow's Go types;
* :mod:`.kinds`: one row of facts per kind (names, replica types, default container, port, restart policy, the
  mljob framework it maps to);
* :mod:`.crd`: the six CustomResourceDefinitions generated from the models (``crds/kubeflow/``);
* :mod:`.admission`: the checks Kubeflow's validating webhooks make, as a pure function.

Nothing here talks to the API server (the ``pure-core`` import contract covers this package).
"""
