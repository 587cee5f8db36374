# The operator image that deploy/base/operator.yaml runs: the core and the framework plugins.
# The operator needs no ML framework (the plugins only compute wiring), so the image stays small;
# training images are the users' own, named in each MLJob's pod templates.
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mljob mljob
COPY plugins/pytorch plugins/pytorch
COPY plugins/tensorflow plugins/tensorflow
COPY plugins/mxnet plugins/mxnet
COPY plugins/jax plugins/jax
COPY plugins/xgboost plugins/xgboost
COPY plugins/paddle plugins/paddle
COPY plugins/mpi plugins/mpi
# Not a framework: it adds a TensorBoard sidecar only to jobs that ask by annotation (plugins/tensorboard/README.md).
COPY plugins/tensorboard plugins/tensorboard
RUN pip install --no-cache-dir . ./plugins/pytorch ./plugins/tensorflow ./plugins/mxnet ./plugins/jax ./plugins/xgboost \
    ./plugins/paddle ./plugins/mpi ./plugins/tensorboard \
    && rm -rf /src
WORKDIR /
# Not root: the operator only talks to the API server.
USER 65532:65532
ENTRYPOINT ["mljob"]
CMD ["operator", "--all-namespaces"]
