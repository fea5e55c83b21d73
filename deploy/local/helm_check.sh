#!/usr/bin/env bash
# Checks the helm chart without a cluster (make helm-check):
#   tools     helm $HELM_VERSION built from the Go module proxy into .local/bin (cached),
#             kubernetes-validate in the venv (pyproject dev extras)
#   render    helm lint --strict and helm template for each values set below, into
#             $HELM_RENDER_DIR/<set>.yaml; fails on the first chart error
#   validate  every rendered manifest against the Kubernetes $KUBE_VERSION schemas (strict)
# Usage: helm_check.sh [tools|render|validate|all]...   (default: all)
# Values sets: default (values.yaml), production (values-production.yaml with the placeholder image
# digests of helm/ci/production-placeholder-digests.yaml) and
# ci-<name> for each helm/ci/<name>-values.yaml (the same files chart-testing uses).
# HELM_CHART_DIR and HELM_RENDER_DIR point the check at another copy of the chart.
set -euo pipefail
source "$(dirname "$0")/env.sh"

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
KUBE_VERSION="${KUBE_VERSION:-1.37.0}"
HELM_BIN="$STACK_DIR/bin/helm"
HELM_CHART_DIR="${HELM_CHART_DIR:-$ROOT/helm}"
HELM_RENDER_DIR="${HELM_RENDER_DIR:-$STACK_DIR/helm-rendered}"
RELEASE="${HELM_RELEASE:-seg}"
NAMESPACE="${HELM_NAMESPACE:-segmentation}"
step() { log "helm-check: $*"; }

install_helm() {
  local stamp="$HELM_BIN.$HELM_VERSION"
  if [[ -x "$HELM_BIN" && -f "$stamp" ]]; then return; fi
  command -v go >/dev/null || die "helm-check: 'go' not found; it builds helm $HELM_VERSION from the Go module proxy"
  step "helm $HELM_VERSION <- Go module proxy (compiles for a few minutes on 2 cores)"
  mkdir -p "$(dirname "$HELM_BIN")"
  # Release builds stamp their version with -X; without it `helm version` reports a dev version.
  local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.metadata="
  if ! GOBIN="$(dirname "$HELM_BIN")" go install -ldflags "$ldflags" \
      "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"; then
    # `go install pkg@version` needs the module's own go.mod to be buildable as a main
    # module (no replace directives); if the proxy or the module refuses, build it as a
    # tool of a throw-away module, as setup.sh does for FerretDB.
    step "go install failed; building helm through a throw-away module"
    local mod="$STACK_DIR/helm-build"
    rm -rf "$mod" && mkdir -p "$mod"
    (cd "$mod" && printf 'module helmbuild\n\ngo 1.24\n' > go.mod &&
      go get -tool "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" &&
      go build -ldflags "$ldflags" -o "$HELM_BIN" helm.sh/helm/v3/cmd/helm) ||
      die "helm-check: could not build helm $HELM_VERSION (see the go output above)"
    rm -rf "$mod"
  fi
  "$HELM_BIN" version --short >&2
  rm -f "$HELM_BIN".v* && touch "$stamp"
}

install_validator() {
  [[ -x "$VENV/bin/kubernetes-validate" ]] && return
  step "kubernetes-validate missing in $VENV; installing the dev extras"
  "$ROOT/deploy/local/setup.sh" python
  [[ -x "$VENV/bin/kubernetes-validate" ]] || die "helm-check: kubernetes-validate still missing in $VENV (is it in pyproject's dev extras?)"
}

# value_sets -> lines "name<TAB>helm values flags"
value_sets() {
  printf 'default\t\n'
  # values-production.yaml renders only with image digests: the set adds obvious placeholders.
  printf 'production\t-f %s -f %s\n' "$HELM_CHART_DIR/values-production.yaml" \
    "$HELM_CHART_DIR/ci/production-placeholder-digests.yaml"
  local f name
  for f in "$HELM_CHART_DIR"/ci/*-values.yaml; do
    [[ -e "$f" ]] || continue
    name=$(basename "$f" -values.yaml)
    printf 'ci-%s\t-f %s\n' "$name" "$f"
  done
}

render() {
  install_helm
  [[ -f "$HELM_CHART_DIR/Chart.yaml" ]] || die "helm-check: no chart at $HELM_CHART_DIR"
  rm -rf "$HELM_RENDER_DIR" && mkdir -p "$HELM_RENDER_DIR"
  local name flags n=0
  while IFS=$'\t' read -r name flags; do
    # shellcheck disable=SC2086
    "$HELM_BIN" lint --strict "$HELM_CHART_DIR" $flags --kube-version "$KUBE_VERSION" > "$HELM_RENDER_DIR/$name.lint" 2>&1 ||
      { cat "$HELM_RENDER_DIR/$name.lint" >&2; die "helm-check: helm lint failed for values set '$name' ($HELM_CHART_DIR)"; }
    # shellcheck disable=SC2086
    "$HELM_BIN" template "$RELEASE" "$HELM_CHART_DIR" --namespace "$NAMESPACE" $flags \
      --kube-version "$KUBE_VERSION" > "$HELM_RENDER_DIR/$name.yaml" 2> "$HELM_RENDER_DIR/$name.err" ||
      { cat "$HELM_RENDER_DIR/$name.err" >&2; rm -f "$HELM_RENDER_DIR/$name.yaml"; die "helm-check: helm template failed for values set '$name' ($HELM_CHART_DIR)"; }
    n=$((n + 1))
  done < <(value_sets)
  step "lint + render ok: $n values sets -> $HELM_RENDER_DIR"
}

validate() {
  install_validator
  shopt -s nullglob
  local files=("$HELM_RENDER_DIR"/*.yaml)
  [[ ${#files[@]} -gt 0 ]] || die "helm-check: nothing rendered in $HELM_RENDER_DIR; run 'helm_check.sh render' first"
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$KUBE_VERSION" "${files[@]}" ||
    die "helm-check: rendered manifests do not match the Kubernetes $KUBE_VERSION schemas (files in $HELM_RENDER_DIR)"
  step "schemas ok: ${#files[@]} rendered files valid for Kubernetes $KUBE_VERSION"
}

parts=("$@"); [[ ${#parts[@]} -gt 0 ]] || parts=(all)
start=$SECONDS
for p in "${parts[@]}"; do
  case "$p" in
    tools) install_helm; install_validator ;;
    render) render ;;
    validate) validate ;;
    all) install_validator; render; validate ;;
    *) die "usage: helm_check.sh [tools|render|validate|all]..." ;;
  esac
done
step "done in $((SECONDS - start)) s"
