# One image for `gpuscale controller`, `gpuscale extender` and `gpuscale node-agent`.
# Runtime dependencies only: no `sim` extra (matplotlib, rich, prometheus-api-client), no test
# or dev tools. The `gpu` extra adds nvidia-ml-py for the node agent (NVML itself comes from the
# driver, mounted by the NVIDIA container runtime).
#   docker build -t gpuscale:dev .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/gpuscale
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gpuscale ./gpuscale
COPY autoscaler ./autoscaler
COPY extender ./extender
COPY policies ./policies
COPY runtime ./runtime
COPY simulations ./simulations
RUN /opt/gpuscale/bin/pip install --no-compile ".[gpu]"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/gpuscale/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/gpuscale /opt/gpuscale
# The same uid/gid the manifests run as (runAsUser: 65532); no home, no shell login.
RUN groupadd --system --gid 65532 gpuscale \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin gpuscale
USER 65532:65532
ENTRYPOINT ["gpuscale"]
CMD ["--help"]
