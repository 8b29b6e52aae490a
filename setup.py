"""Packaging for the iheardAI streaming pipelines; also Beam's --setup_file for remote workers."""

from setuptools import find_packages, setup

setup(
    name="iheardai-pipelines",
    version="0.1.0",
    description="Apache Beam streaming pipelines (Kafka -> Postgres, Redis, Parquet on Spaces) on Apache Flink",
    packages=find_packages(include=["beam_pipelines*", "transforms*", "io_connectors*", "events*", "workloads*", "observability*",
                                    "iheardai_analytics*"]),
    package_data={"": ["*.json", "*.yaml"], "iheardai_analytics": ["static/*.js"]},
    python_requires=">=3.10",
    install_requires=[
        "apache-beam[gcp,aws]==2.62.0",
        "confluent-kafka>=2.3",
        "psycopg2-binary>=2.9",
        "redis>=5",
        "pyarrow>=14,<17",
        "boto3>=1.28",
        "pydantic>=2.5",
        "requests>=2.31",
        "phonenumbers>=8.13",
        "schwifty>=2024.1",
        "user-agents>=2.2",
        "ua-parser>=1.0",
    ],
)
