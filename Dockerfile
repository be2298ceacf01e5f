# adamax-ps server image.
#
# Installs from a wheelhouse, so the build itself needs no network:
#   python -m pip wheel -w build/wheelhouse .
#   podman build --format docker -t adamax-ps .    (or docker build -t adamax-ps .)
# BASE may be any Debian-like image with python3 (3.11, matching the wheels)
# and the venv module, e.g. python:3.11-slim or a debootstrapped bookworm.
ARG BASE=python:3.11-slim

FROM ${BASE} AS install
# EXTRAS='[torch]' makes the training-worker image of deploy/ (its wheelhouse
# built with '.[torch]').
ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY build/wheelhouse/ /wheelhouse/
# The venv keeps the install apart from the base's own Python packages.
RUN python3 -m venv /opt/adamax-ps \
    && /opt/adamax-ps/bin/pip install --no-index --find-links /wheelhouse "adamax-ps${EXTRAS}" \
    && /opt/adamax-ps/bin/adamax-ps serve --help > /dev/null

FROM ${BASE}
ARG UID=10001
ENV PATH=/opt/adamax-ps/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONFAULTHANDLER=1 \
    NUMBA_CACHE_DIR=/var/cache/adamax-ps/numba \
    ADAMAX_PS_CHECKPOINT_DIR=/var/lib/adamax-ps \
    ADAMAX_PS_HOST=0.0.0.0
RUN groupadd --gid "${UID}" adamax \
    && useradd --no-log-init --uid "${UID}" --gid adamax \
        --home-dir /var/cache/adamax-ps --no-create-home --shell /usr/sbin/nologin adamax \
    && mkdir -p /var/lib/adamax-ps /var/cache/adamax-ps/numba \
    && chown -R adamax:adamax /var/lib/adamax-ps /var/cache/adamax-ps
COPY --from=install /opt/adamax-ps /opt/adamax-ps
USER ${UID}:${UID}
WORKDIR /var/cache/adamax-ps
# Compile the numba kernels into the cache now, as the user who runs them, so a
# server starts without the JIT; a host with another CPU recompiles into the
# same (writable) folder.
RUN python -c "import adamax_ps.server.kernels"
# A container listens on every address (outside it, only published ports are
# reached). Give it a token (ADAMAX_PS_TOKEN or --token-file): without one the
# server warns that anyone who reaches it can change the model.
VOLUME ["/var/lib/adamax-ps"]
EXPOSE 50051 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["adamax-ps", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["adamax-ps"]
CMD ["serve"]
