# One image for the whole suite; the command picks what a container runs:
#   lifecycle serve <service>   one service (users, workflows, segments, triggers, metrics)
#   lifecycle serve console     the operations console (HTTP, 8080)
#   lifecycle migrate           the migrations (a Job before each rollout)
#   lifecycle maintenance       partitions ahead, retention (a daily CronJob)
# Dependencies come from requirements.lock (`make lock`), installed by hash and
# from wheels only, so no compiler is needed in either stage. Pin the base image
# by digest in a release build: --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.lock requirements-build.lock ./
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes --only-binary=:all: -r requirements-build.lock \
    && python -m venv --without-pip /opt/lifecycle \
    && /opt/build/bin/pip --python /opt/lifecycle/bin/python install \
        --require-hashes --only-binary=:all: --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY lifecycle ./lifecycle
COPY clients ./clients
COPY conditions ./conditions
COPY console ./console
COPY runtime ./runtime
COPY services ./services
COPY suite ./suite
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
    && /opt/build/bin/pip --python /opt/lifecycle/bin/python install --no-deps --no-index /wheels/lifecycle_ops-*.whl \
    && /opt/lifecycle/bin/python -m compileall -q /opt/lifecycle

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/lifecycle/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LIFECYCLE_HOST=0.0.0.0
# The interpreter needs no installer at run time; the venv was built without one.
# The certificates' folder belongs to the user, so that a volume mounted there
# (compose.yaml's `tls`) starts out theirs and `lifecycle tls init` can write it.
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin lifecycle \
    && mkdir -p /var/run/lifecycle/tls && chown 10001:10001 /var/run/lifecycle/tls \
    && chmod 0700 /var/run/lifecycle/tls
COPY --from=build /opt/lifecycle /opt/lifecycle
USER 10001:10001
EXPOSE 50051 50052 50053 50054 50055 8080
ENTRYPOINT ["lifecycle"]
CMD ["--help"]
