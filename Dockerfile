# The mm-cds service image; docker-compose.yml builds it (with HAPI FHIR and a patient loader).
#   docker build -t mm-cds:local .
# It runs from its source tree, /app, like `make serve`: the knowledge (plandefinitions/,
# valuesets/), the example site and the scenarios (the "try it" page, the patient loader).
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY cds_service ./cds_service
COPY plandefinitions ./plandefinitions
COPY valuesets ./valuesets
COPY examples ./examples
COPY tests/scenarios ./tests/scenarios
COPY deploy ./deploy
RUN pip install --no-cache-dir -e .

ENV MM_CDS_PORT=8080 MM_CDS_DATA_DIR=/app/data
EXPOSE 8080
# Off loopback the service refuses to start without trusted JWT issuers or an explicit
# allow_insecure: docker-compose.yml mounts its choice (deploy/compose.toml) via MM_CDS_CONFIG.
CMD ["mm-cds", "serve", "--prod", "--host", "0.0.0.0"]
