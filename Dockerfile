# One image for `gpuscale controller`, `gpuscale extender` and `gpuscale node-agent`.
# Runtime dependencies only, from the hashed lock requirements/runtime.lock (`make lock`): the
# `gpu` extra (nvidia-ml-py for the node agent; NVML comes from the driver, mounted by the NVIDIA
# container runtime), no `sim` extra. The image does not carry the simulator: `gpuscale simulate`
# says so and names the extra to install; matplotlib and scipy would more than double the image.
#
# With a registry:     docker build -t localhost/gpuscale:dev .
# Without one:         make image   (Debian bases from mmdebstrap, buildah; see the README)
# Build arguments:
#   PYTHON_IMAGE   build stage: Python 3.11+ with the venv module and pip (python:3.11-slim)
#   RUNTIME_IMAGE  final stage: the same Python at the same path, pip not needed (PYTHON_IMAGE)
#   INDEX_URL      a package index to use instead of PyPI (an air-gapped mirror)
# Build secret:
#   pip-ca         a CA bundle pip trusts, for a TLS-intercepting proxy or a private index:
#                  docker build --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt .
ARG PYTHON_IMAGE=python:3.11-slim
ARG RUNTIME_IMAGE=${PYTHON_IMAGE}

FROM ${PYTHON_IMAGE} AS deps
ARG INDEX_URL=
# Bytecode: the image runs on a read-only root, so the .pyc made here are the only ones it will
# ever have. pip compiles them at install; compileall then rewrites them as unchecked-hash .pyc,
# which Python loads without looking at the source's mtime (the COPY below may change it) or
# reading and hashing the source (checked-hash costs that on every start): the files never change.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements/runtime.lock requirements/build.lock ./requirements/
# The locked dependencies, every file checked against its hash, into /opt/gpuscale; the build
# tools (hatchling, pip) into /opt/build, which stays behind. The venv's own pip and setuptools
# go, so the runtime image has no installer. The project itself comes later into
# /opt/gpuscale/app (a .pth puts it on the path), so that a source change rebuilds and ships a
# layer of a few MB instead of the whole environment.
RUN --mount=type=secret,id=pip-ca,target=/run/secrets/pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && python3 -m venv /opt/build \
    && python3 -m venv /opt/gpuscale \
    && /opt/build/bin/pip install -q ${INDEX_URL:+--index-url "$INDEX_URL"} \
        --require-hashes --no-deps -r requirements/build.lock \
    && /opt/gpuscale/bin/pip install -q ${INDEX_URL:+--index-url "$INDEX_URL"} \
        --require-hashes --no-deps -r requirements/runtime.lock \
    && /opt/gpuscale/bin/python -m pip uninstall -q -y pip setuptools \
    && /opt/gpuscale/bin/python -m compileall -q -f -j0 --invalidation-mode unchecked-hash \
        /opt/gpuscale/lib \
    && echo /opt/gpuscale/app > "$(/opt/gpuscale/bin/python -c \
        'import sysconfig; print(sysconfig.get_paths()["purelib"])')/gpuscale-app.pth"

FROM deps AS build
COPY pyproject.toml README.md ./
COPY gpuscale ./gpuscale
COPY autoscaler ./autoscaler
COPY extender ./extender
COPY policies ./policies
COPY runtime ./runtime
COPY simulations ./simulations
# The project's own wheel, built offline by the locked hatchling, then installed without deps by
# the build pip for the runtime interpreter (so the `gpuscale` script runs /opt/gpuscale's python).
RUN /opt/build/bin/pip wheel -q --no-deps --no-build-isolation --no-index -w /tmp/dist . \
    && /opt/build/bin/pip --python /opt/gpuscale/bin/python install -q --no-deps --no-index \
        --target /opt/gpuscale/app /tmp/dist/gpuscale-*.whl \
    && /opt/build/bin/pip --python /opt/gpuscale/bin/python check \
    && /opt/gpuscale/bin/python -m compileall -q -f -j0 --invalidation-mode unchecked-hash \
        /opt/gpuscale/app

FROM ${RUNTIME_IMAGE}
ENV PATH=/opt/gpuscale/app/bin:/opt/gpuscale/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=deps /opt/gpuscale /opt/gpuscale
COPY --from=build /opt/gpuscale/app /opt/gpuscale/app
# The same uid/gid the manifests run as (runAsUser: 65532), without useradd (not every base has
# it); no home, no login shell. A base's own pip (python:3.11-slim has one) goes too.
RUN echo 'gpuscale:x:65532:65532:gpuscale:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
    && echo 'gpuscale:x:65532:' >> /etc/group \
    && if python3 -c 'import pip' 2>/dev/null; then \
        python3 -m pip uninstall -q -y pip setuptools wheel; fi
USER 65532:65532
ENTRYPOINT ["gpuscale"]
CMD ["--help"]
