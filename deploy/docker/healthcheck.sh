#!/bin/bash
# Container health check of ecmt-server: GET /healthz/ready on its plain HTTP/1.1 port (Ecmt:MetricsPort).
# Healthy (exit 0) once every model has loaded or failed, at least one is ready, and the server is not shutting
# down: the same readiness as grpc.health.v1 service "" (src/Server/README.md). bash's /dev/tcp does the request, so
# the image needs no curl. Kubernetes does not use this: its probes speak grpc.health.v1 (deploy/k8s).
set -uo pipefail

port="${Ecmt__MetricsPort:-9464}"
if [[ "$port" == "0" ]]; then
  echo "ecmt-healthcheck: Ecmt__MetricsPort=0 leaves no plain HTTP port to probe" >&2
  exit 1
fi

exec 3<>"/dev/tcp/127.0.0.1/${port}" || exit 1
printf 'GET /healthz/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
IFS=' ' read -r -t 5 _ status _ <&3 || { echo "ecmt-healthcheck: no answer on port ${port}" >&2; exit 1; }
exec 3<&-
if [[ "$status" == "200" ]]; then exit 0; fi
echo "ecmt-healthcheck: /healthz/ready answered ${status}" >&2
exit 1
