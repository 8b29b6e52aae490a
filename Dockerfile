# syntax=docker/dockerfile:1
# The pipelines image: Python 3.11 + the project. One image for
#   - the Beam Python SDK worker pool sidecar of each TaskManager
#       python -m beam_pipelines.worker_pool --service_port=50000   (the default CMD; Beam's pool + a state cache)
#   - the submit Jobs            python flink-deploy/flinkctl.py submit beam_pipelines.<name> ...
#   - the schema migration       python -m sql.migrate
#   - the Marketo extractor      python -m io_connectors.marketo_extractor incremental
# Build from the repository root:
#   docker build -t registry.digitalocean.com/iheardai/pipelines:0.1.0 .
# The worker pool starts SDK workers with this image's interpreter, so the pipeline code and its pinned
# dependencies (requirements.txt: apache-beam==2.62.0, the Java jars' version) are what runs on Flink;
# never pass --setup_file/--requirements_file in production, the code is already here.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/iheardai

# Dependencies first: this layer is reused until requirements.txt changes (all pins ship manylinux wheels).
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY setup.py ./
COPY beam_pipelines ./beam_pipelines
COPY events ./events
COPY transforms ./transforms
COPY io_connectors ./io_connectors
COPY observability ./observability
COPY iheardai_analytics ./iheardai_analytics
COPY sql ./sql
# Deployment files the code reads when a graph is built: the PII policy and the model price table.
COPY config ./config
COPY flink-deploy/flinkctl.py flink-deploy/gen_topics.py flink-deploy/probes.py ./flink-deploy/
RUN pip install --no-deps . \
    && python -c "import apache_beam, beam_pipelines.options; assert apache_beam.__version__ == '2.62.0', apache_beam.__version__" \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /opt/iheardai iheardai

# The source tree stays on the path too: `python -m sql.migrate` and flink-deploy/ scripts run from here.
ENV PYTHONPATH=/opt/iheardai \
    HOME=/tmp
USER 10001
EXPOSE 50000
CMD ["python", "-m", "beam_pipelines.worker_pool", "--service_port=50000"]
