# One image for every job of a sweep; the entrypoint is the `aquarium` CLI:
#   docker run --rm IMAGE train-variant --config smoke.yaml --variant cnn-a --store s3://bucket/prefix
#
# Build args
#   BASE_IMAGE           python:3.11-slim-bookworm (default) or a bare Debian bookworm image: without Python in the
#                        base, python3/python3-venv/pip come from apt
#   TF_EXTRA             gpu (default: TensorFlow with CUDA, the pyproject `gpu` extra) or cpu (tensorflow-cpu)
#   CA_BUNDLE            path, inside the build context, of a PEM CA bundle to trust (corporate TLS proxies);
#                        `make image CA_BUNDLE=/any/path.crt` copies it to build/ca-bundle.crt for you
#   PIP_INDEX_URL        package index to install from (default: pip's, pypi.org)
#   PIP_EXTRA_INDEX_URL  an extra package index
#   PIP_VERSION          the pip that resolves the lock (the Debian venv's pip 23 cannot)
# Dependencies come from constraints.txt (the lock); code is the last layer, so a code change rebuilds in seconds.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TF_EXTRA=gpu
ARG CA_BUNDLE=
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG APP_UID=10001
ARG PIP_VERSION=26.3

ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# -- system: Python (from apt when the base has none), CA certificates, the non-root user ------------------------
COPY ${CA_BUNDLE} .dockerignore /tmp/build/
RUN set -eu; \
    pkgs=""; \
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then \
      pkgs="python3 python3-venv python3-pip"; \
    fi; \
    [ -f /etc/ssl/certs/ca-certificates.crt ] && [ -x /usr/sbin/update-ca-certificates ] || pkgs="$pkgs ca-certificates"; \
    if [ -n "$pkgs" ]; then \
      apt-get update -qq; \
      apt-get install -y -qq --no-install-recommends $pkgs >/dev/null; \
      rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; \
    fi; \
    if [ -n "$CA_BUNDLE" ]; then \
      cp "/tmp/build/$(basename "$CA_BUNDLE")" /usr/local/share/ca-certificates/aquarium-build-ca.crt; \
      update-ca-certificates >/dev/null 2>&1; \
    fi; \
    rm -rf /tmp/build; \
    python3 -m venv "$VIRTUAL_ENV"; \
    groupadd --gid "$APP_UID" app; \
    useradd --uid "$APP_UID" --gid "$APP_UID" --create-home --home-dir /home/app --shell /usr/sbin/nologin app

# Every TLS client trusts the system bundle (which holds CA_BUNDLE when given): pip, requests, boto3, OpenSSL.
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    AWS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

# -- dependencies (the big, rarely changing layer): the pyproject dependencies + the TF extra, pinned by the lock -
COPY pyproject.toml constraints.txt /tmp/deps/
RUN set -eu; \
    [ -n "$PIP_INDEX_URL" ] || unset PIP_INDEX_URL; \
    [ -n "$PIP_EXTRA_INDEX_URL" ] || unset PIP_EXTRA_INDEX_URL; \
    case "$TF_EXTRA" in cpu|gpu) ;; *) echo "TF_EXTRA=$TF_EXTRA: use cpu or gpu" >&2; exit 2;; esac; \
    python -c 'import sys, tomllib; p = tomllib.load(open(sys.argv[1], "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"][sys.argv[2]]))' \
      /tmp/deps/pyproject.toml "$TF_EXTRA" >/tmp/deps/requirements.txt
RUN set -eu; \
    [ -n "$PIP_INDEX_URL" ] || unset PIP_INDEX_URL; \
    [ -n "$PIP_EXTRA_INDEX_URL" ] || unset PIP_EXTRA_INDEX_URL; \
    pip install -q "pip==$PIP_VERSION"; \
    pip install -q -c /tmp/deps/constraints.txt -r /tmp/deps/requirements.txt "setuptools>=68" wheel; \
    find "$VIRTUAL_ENV" -name __pycache__ -type d -prune -exec rm -rf {} +

# -- code (small, last) ------------------------------------------------------------------------------------------
WORKDIR /app
COPY pyproject.toml sweep.yaml smoke.yaml ./
COPY common ./common
COPY jobs ./jobs
COPY k8s ./k8s
RUN set -eu; \
    pip install -q --no-deps --no-build-isolation --no-compile /app; \
    rm -rf /app/build /app/*.egg-info; \
    aquarium --help >/dev/null

# Nothing is written outside /tmp and $HOME; on Kubernetes the root filesystem is read-only and both are emptyDirs.
ENV HOME=/home/app \
    TMPDIR=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    KERAS_HOME=/tmp/keras \
    XDG_CACHE_HOME=/tmp/cache \
    TF_CPP_MIN_LOG_LEVEL=2
USER ${APP_UID}:${APP_UID}
ENTRYPOINT ["aquarium"]
CMD ["--help"]
