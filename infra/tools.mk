# Infrastructure targets, included by the top-level Makefile.
#
#   make tools                      helm, kubectl, promtool/prometheus, alertmanager, kubernetes-validate,
#                                   checkov, yamllint into .tools/ (pinned; idempotent; see
#                                   infra/install-tools.sh)
#   make rollout MODEL=NAME VERSION=N [ENV=dev]
#                                   print the commands that roll version N of model NAME out on
#                                   AKS (and the ones that roll it back); runs nothing
#   make deploy-plan [ENV=dev]      print what infra/deploy.sh would run (az deployment + helm)
TOOLS_DIR := .tools
ENV ?= dev

.PHONY: tools rollout deploy-plan

tools:
	@bash infra/install-tools.sh

rollout:
	@test -n "$(MODEL)" -a -n "$(VERSION)" || { echo "usage: make rollout MODEL=NAME VERSION=N [ENV=dev]" >&2; exit 2; }
	@bash infra/rollout.sh --env $(ENV) --model $(MODEL) $(VERSION)

deploy-plan:
	@bash infra/deploy.sh $(ENV) --dry-run
