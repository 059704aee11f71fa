# The mm-cds service image; docker-compose.yml builds it (with HAPI FHIR and a patient loader).
#   docker build -t mm-cds:local .
# Two stages: the first builds the wheel, which carries the knowledge (plandefinitions/,
# valuesets/), the try-it page and its scenarios with the example site (setup.py,
# docs/packaging.md), and the request path's hottest modules compiled with mypyc
# (cds_service/_native.py: a C compiler and mypy, in this stage only); the second installs
# that wheel, not the source tree, with its dependencies held to requirements.lock, and runs
# it as an unprivileged user.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements.lock pyproject.toml setup.py MANIFEST.in README.md ./
RUN pip install --no-cache-dir -c requirements.lock mypy setuptools
ENV MM_CDS_COMPILE=1
COPY cds_service ./cds_service
COPY plandefinitions ./plandefinitions
COPY valuesets ./valuesets
COPY tests/scenarios ./tests/scenarios
COPY examples/site ./examples/site
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation -w dist .

FROM python:3.11-slim
WORKDIR /app
COPY requirements.lock ./
COPY --from=build /src/dist ./dist
RUN pip install --no-cache-dir -c requirements.lock ./dist/*.whl
# Site settings (deploy/compose.toml, mounted choices); no code or knowledge is read from here.
COPY deploy ./deploy
# The only place the service writes (the SQLite feedback database): a volume, so the rest of
# the container can run read-only (docker run --read-only).
RUN mkdir -p /app/data && chown 10001:10001 /app/data
ENV MM_CDS_PORT=8080 MM_CDS_DATA_DIR=/app/data
# No MM_CDS_ACCEPT_UNVERIFIED_TREATMENT_CODES here, on purpose: the image refuses to start
# while a treatment value set has no verified code (the go-live gate, docs/terminology.md),
# until the site maps its codes (MM_CDS_SITE_DIRS) or records its decision in its settings
# (deploy/compose.toml shows the demo's).
VOLUME ["/app/data"]
USER 10001
EXPOSE 8080
# Off loopback the service refuses to start without trusted JWT issuers or an explicit
# allow_insecure: docker-compose.yml mounts its choice (deploy/compose.toml) via MM_CDS_CONFIG.
CMD ["mm-cds", "serve", "--prod", "--host", "0.0.0.0"]
