#!/usr/bin/env bash
# The ALS job submitted by hand to a cluster: the same job and arguments on YARN, on
# Kubernetes and on a Spark standalone master; only how executors get the project
# differs. The nightly workflow submits the same way from [spark] in deploy/luigi.cfg.
#
#   deploy/als-submit.sh yarn                      PLAYS OUT [job options...]
#   deploy/als-submit.sh k8s://https://API:6443    PLAYS OUT [job options...]
#   deploy/als-submit.sh spark://HOST:7077         PLAYS OUT [job options...]
#
# PLAYS and OUT must be paths every executor reaches (HDFS, an object store, or a
# filesystem mounted at the same path on every node). `jobs/als/job.py --help` lists the
# job options (--rank, --iterations, --blocks, --base for a fold-in night, ...).
# YARN and standalone: the project is installed on every node (deploy/spark-defaults.conf
# names its interpreter). Kubernetes: executors run IMAGE, this project installed from
# its lock (the CronJob's image, deploy/k8s-cronjob.yaml), whose job file is local:// to it.
set -euo pipefail
master=${1:?master: yarn, k8s://https://HOST:PORT or spark://HOST:PORT}
plays=${2:?plays (Parquet, CSV or MSD triplets)} out=${3:?output directory}
shift 3
here=$(cd "$(dirname "$0")" && pwd)
case "$master" in
  yarn|spark://*)
    job="$here/../jobs/als/job.py"
    extra=(--properties-file "$here/spark-defaults.conf")
    ;;
  k8s://*)
    job=local:///opt/coldstart/jobs/als/job.py
    extra=(--deploy-mode cluster
           --conf "spark.kubernetes.container.image=${IMAGE:?image with the project installed}"
           --conf "spark.kubernetes.namespace=${NAMESPACE:-coldstart}"
           --conf "spark.kubernetes.authenticate.driver.serviceAccountName=${SERVICE_ACCOUNT:-spark}"
           --conf spark.executor.instances="${EXECUTORS:-8}"
           --conf spark.executor.cores=4 --conf spark.executor.memory=8g
           --conf spark.pyspark.python=/opt/coldstart/.venv/bin/python)
    ;;
  *) echo "unknown master $master (yarn, k8s://..., spark://...)" >&2; exit 2 ;;
esac
exec spark-submit --master "$master" "${extra[@]}" --name coldstart-als \
    "$job" --plays "$plays" --out "$out" "$@"
