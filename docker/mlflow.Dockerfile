# syntax=docker/dockerfile:1
# The MLflow tracking server of docker/compose.yaml: PostgreSQL for runs, an S3 bucket (MinIO) for artifacts,
# MLflow's basic-auth app for users. Build context: docker/ (compose does this).
#   docker build -f docker/mlflow.Dockerfile -t attnsearch-mlflow:3.17.2 docker
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
COPY constraints.txt /etc/attnsearch/constraints.txt
# the same MLflow as the clients (docker/constraints.txt); psycopg2 for PostgreSQL, boto3 for S3
RUN pip install -c /etc/attnsearch/constraints.txt "mlflow[auth]" psycopg2-binary boto3

RUN useradd --create-home --uid 1000 mlflow && mkdir -p /var/lib/mlflow-auth && chown mlflow /var/lib/mlflow-auth
COPY mlflow_auth.ini /etc/mlflow/basic_auth.ini
COPY --chmod=755 mlflow-entrypoint.sh /usr/local/bin/mlflow-entrypoint.sh
COPY mlflow-users.py /usr/local/bin/mlflow-users.py
ENV MLFLOW_AUTH_CONFIG_PATH=/etc/mlflow/basic_auth.ini
USER mlflow
EXPOSE 5000
ENTRYPOINT ["/usr/local/bin/mlflow-entrypoint.sh"]
